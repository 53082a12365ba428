use tokio::task::JoinHandle;

/// The running tasks of one agent. Dropping the handle aborts them.
#[derive(Debug, Default)]
pub struct AgentHandle {
    tasks: Vec<JoinHandle<()>>,
}

impl AgentHandle {
    pub(crate) fn new(tasks: Vec<JoinHandle<()>>) -> Self {
        Self { tasks }
    }

    /// Stops the agent now. Requests already sent may still reach the API server.
    pub fn shutdown(self) {
        drop(self);
    }

    /// Whether every task of the agent is still running (none panicked or returned).
    pub fn is_running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
