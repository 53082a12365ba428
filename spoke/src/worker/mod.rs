//! The node worker (`kmm-spoke worker load|unload`, spoke issue). So far: the exact commands and
//! files it uses, as pure functions, so the pod builder and the worker agree on them.

pub mod modprobe;
