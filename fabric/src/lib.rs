//! NVMe over Fabrics for the storage fabric: the wire protocol (free of I/O),
//! the target core, the host library and the transports (TCP; RDMA next).

pub mod daemon;
pub mod host;
pub mod target;
pub mod transport;
pub mod wire;
