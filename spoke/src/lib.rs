//! kmm-spoke: the managed-mode Module controller and the node worker (later issues).
