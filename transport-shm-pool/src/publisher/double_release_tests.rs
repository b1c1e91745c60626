use super::*;
use transport_core::Transport;

/// A slot guard or loan dropped for a slot that is already free (a
/// double release) is refused and counted, with the free lists not full,
/// and does not panic inside `Drop` (this is a debug build).
#[tokio::test]
async fn double_releases_from_drops_are_counted_not_panics() {
    let url = format!(
        "shm-pool://double-{}?slots=3&slot_size=4KiB",
        std::process::id()
    );
    let mut publisher = crate::ShmPoolTransport::new()
        .publish(&Endpoint::parse(&url).unwrap(), &PublishOptions::default())
        .await
        .unwrap();
    let shared = publisher.shared.clone();
    let held = shared.pool.pop().unwrap();
    let fwd_held = shared.fwd_free.pop().unwrap();
    let loan = publisher.loan(10).await.unwrap();
    drop(loan);
    assert_eq!(publisher.free_slots(), 2);
    // A loan and a guard for slots that are already free: both lists have
    // room (one slot of each is still taken).
    let free_pool = shared.pool.pop().unwrap();
    shared.pool.push(free_pool);
    drop(SlotLoan::new(shared.clone(), free_pool, 10));
    let free_fwd = shared.fwd_free.pop().unwrap();
    shared.fwd_free.push(free_fwd);
    drop(SlotGuard {
        shared: shared.clone(),
        index: Some(free_fwd),
    });
    assert_eq!(publisher.double_releases(), 2);
    assert_eq!(publisher.free_slots(), 2, "nothing was freed twice");
    assert_eq!(publisher.free_forward_slots(), 2);
    // Every slot still comes out once.
    shared.pool.push(held);
    shared.fwd_free.push(fwd_held);
    let mut seen: Vec<u32> = std::iter::from_fn(|| shared.pool.pop()).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    let mut seen: Vec<u32> = std::iter::from_fn(|| shared.fwd_free.pop()).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![3, 4, 5]);
    assert_eq!(publisher.double_releases(), 2);
}
