//! placeholder
pub struct RaftNode;
#[derive(Debug)]
pub enum WriteError {}
