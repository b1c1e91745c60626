//! Without the `shm` feature: the names `shm.rs` gives the publisher, for
//! types that cannot exist (so every shared-memory branch is dead code the
//! compiler removes).

use transport_core::{Frame, Loan, Result};

use super::ZmqPublisher;
use crate::config::Config;
use crate::wire::Control;

/// No pool can exist without the feature.
#[derive(Debug, Clone)]
pub(super) enum Pool {}

/// No attach server can exist without the feature.
#[derive(Debug)]
pub(super) enum Server {}

/// Never a pool: `shm=pool` is refused when the endpoint is parsed.
pub(super) fn open(
    _cfg: &Config,
    _address: &str,
) -> Result<(Option<Pool>, Option<Server>, Option<Control>)> {
    Ok((None, None, None))
}

pub(super) fn release_slot(pool: &Pool, _holder: u32, _index: u32, _generation: u64) -> bool {
    match *pool {}
}

pub(super) fn release_all(pool: &Pool, _holder: u32) {
    match *pool {}
}

pub(super) fn free_slots(pool: &Pool) -> usize {
    match *pool {}
}

pub(super) fn stale_releases(pool: &Pool) -> u64 {
    match *pool {}
}

pub(super) async fn next_closed(server: Option<&mut Server>) -> u32 {
    match server {
        Some(s) => match *s {},
        None => std::future::pending().await,
    }
}

pub(super) fn is_open(server: Option<&Server>, _conn: u32) -> bool {
    match server {
        Some(s) => match *s {},
        None => false,
    }
}

impl ZmqPublisher {
    pub(super) async fn send_pooled(&mut self, pool: Pool, _frame: Frame) -> Result<()> {
        match pool {}
    }

    pub(super) async fn loan_pooled(&self, pool: Pool, _len: usize) -> Result<Loan> {
        match pool {}
    }

    pub(super) async fn send_loan_pooled(&mut self, pool: Pool, _loan: Loan) -> Result<()> {
        match pool {}
    }
}
