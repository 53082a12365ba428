//! A test's child process, killed and reaped when its handle drops: no daemon outlives the test
//! that started it, even when the test panics.

use std::{
    ops::{Deref, DerefMut},
    process::Child,
};

/// A [`Child`] killed (SIGKILL) and reaped on drop.
pub struct KilledOnDrop(Child);

impl KilledOnDrop {
    pub fn new(child: Child) -> Self {
        Self(child)
    }
}

impl Deref for KilledOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
