//! Bulk copies of payloads into and out of the ring: transport-core's
//! streaming copy (see [`transport_core::copy`]), shared with transport-shm-pool.

pub(crate) use transport_core::copy::copy;
