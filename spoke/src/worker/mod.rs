//! The node worker (`kmm-spoke worker load|unload --config <file>`): what its configuration may
//! hold ([`input`]), the modprobe command lines and files it uses ([`modprobe`]), what it does on the node ([`run`], with the module's
//! [`firmware`] and the [`kernel_log`] around modprobe), the worker pod the controller starts
//! for it ([`pod`]) and what that pod says back ([`pod_state`]).

pub mod firmware;
pub mod input;
pub mod kernel_log;
pub mod modprobe;
pub mod pod;
pub mod pod_state;
pub mod run;
