use super::*;

fn desc(index: u32, generation: u64) -> Outgoing {
    Outgoing::Desc {
        desc: Desc {
            segment: 1,
            index,
            generation,
            len: 0,
            missed: 0,
        },
        header: Bytes::new(),
    }
}

fn fwd(index: u32, generation: u64) -> Outgoing {
    Outgoing::Fwd {
        desc: FwdDesc {
            segment: 0,
            index,
            generation,
            offset: 0,
            len: 0,
            missed: 0,
        },
        header: Bytes::new(),
    }
}

fn missed(o: &Outgoing) -> u64 {
    match o {
        Outgoing::Desc { desc, .. } => desc.missed,
        Outgoing::Fwd { desc, .. } => desc.missed,
        _ => 0,
    }
}

#[test]
fn removed_descriptors_carry_their_count_forward() {
    let mut out = Out::default();
    out.queue.push_back(Outgoing::Ready(0));
    out.push_desc(desc(0, 1));
    out.push_desc(desc(1, 1));
    assert!(out.remove_desc(0, 1));
    assert!(!out.remove_desc(0, 1), "already gone");
    assert_eq!(out.queue.len(), 2);
    assert_eq!(missed(&out.queue[1]), 1);
    assert!(out.remove_desc(1, 1));
    assert_eq!(out.carry, 2, "nothing after it: carried to the next frame");
    out.push_desc(desc(0, 2));
    assert_eq!(missed(&out.queue[1]), 2);
    assert_eq!(out.carry, 0);
}

#[test]
fn a_forget_cancels_the_queued_segment_of_its_index() {
    let fd = sys::memfd_sealed("forget-test", 4096).unwrap();
    let seg = Arc::new(crate::registry::SegFd::for_tests(fd));
    let segment = |index| Outgoing::Segment {
        index,
        seg: seg.clone(),
    };
    let mut out = Out::default();
    // Index 3 was sent long ago: its FORGET is queued.
    out.forget(3);
    for _ in 0..100 {
        // Reused, then forgotten again, while nothing is written.
        out.queue.push_back(segment(3));
        out.forget(3);
    }
    out.queue.push_back(segment(3));
    out.queue.push_back(segment(5));
    assert_eq!(
        out.queued(),
        3,
        "one FORGET and one SEGMENT of 3, SEGMENT of 5"
    );
    assert!(matches!(out.queue[0], Outgoing::Forget(3)));
    out.forget(5);
    assert_eq!(out.queued(), 2, "a SEGMENT never written needs no FORGET");
}

#[test]
fn forwarded_descriptors_carry_counts_past_other_messages() {
    let mut out = Out::default();
    out.push_desc(fwd(4, 1));
    out.queue.push_back(Outgoing::Forget(3));
    out.push_desc(desc(0, 1));
    out.push_desc(fwd(5, 1));
    assert!(out.remove_desc(4, 1), "a FWD by its claim index");
    assert!(!out.remove_desc(4, 2), "another generation");
    assert_eq!(missed(&out.queue[1]), 1, "skips the FORGET to the DESC");
    assert!(out.remove_desc(0, 1));
    assert_eq!(missed(&out.queue[1]), 2, "then on to the FWD");
    assert_eq!(out.queue.len(), 2);
}
