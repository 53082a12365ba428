//! The node worker (`kmm-spoke worker load|unload --config <file>`): the modprobe command lines
//! and files it uses ([`modprobe`]), what it does on the node ([`run`]), and the worker pod the
//! controller starts for it ([`pod`]) and what it says back ([`pod_state`]).

pub mod modprobe;
pub mod pod;
pub mod pod_state;
pub mod run;
