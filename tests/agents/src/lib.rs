//! Stand-ins for the fleet components that no test machine here runs: the OCM work agent, the OCM
//! registration agent and a kubelet (Node registration, Leases, pod phases, graceful deletion) with
//! DaemonSet and Job controllers for the simulator.
//!
//! Every agent talks to its API servers only through [`kube::Client`], so the same code runs
//! against the in-memory simulator or a real cluster. Each `spawn` returns an [`AgentHandle`];
//! dropping it stops the agent.

pub mod claims;
mod conditions;
pub mod feedback;
mod handle;
pub mod jsonpath;
pub mod kubelet;
pub mod registration;
mod util;
pub mod work;

pub use handle::AgentHandle;
pub use kubelet::{
    Kubelet, KubeletOptions, KubeletScript, MemoryLogSink, NodeControl, NodeRegistration, Outcome,
    PodLogSink, PodMatcher, ScriptRule,
};
pub use registration::{RegistrationAgent, RegistrationOptions};
pub use work::{WorkAgent, WorkAgentOptions};
