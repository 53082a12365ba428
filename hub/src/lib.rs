//! kmm-hub: the hub-side library behind the `kmm-hub` binary.
