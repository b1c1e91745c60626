//! Bounded random input over the whole receive path: ZMTP framing
//! (`zmtp::Reader`, with the limits both sides use), then the framewire
//! parsers over what it yields (downstream data, controls, shared-memory
//! references; upstream subscriptions and reports). Random bytes, and valid
//! streams with random corruption: never a panic, never a message over the
//! limit, and every length checked before it is trusted.
//!
//! Deterministic (a fixed-seed xorshift), a few thousand cases, well under a
//! second in a debug build.

use bytes::{Bytes, BytesMut};
use transport_core::{Frame, Layout, codec};
use transport_zmq::wire::{self, Control};
use transport_zmq::zmtp::{self, Incoming, Limits};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const LIMITS: [Limits; 2] = [
    Limits {
        max_message: 1 << 16,
        max_parts: 4,
        what: "upstream",
        skip_oversized: false,
    },
    Limits {
        max_message: 1 << 20,
        max_parts: 4,
        what: "downstream",
        skip_oversized: true,
    },
];

fn frame_bytes(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let more = u8::from(i + 1 < parts.len());
        if p.len() <= 255 {
            out.extend_from_slice(&[more, p.len() as u8]);
        } else {
            out.push(more | 2);
            out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

fn valid_messages(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(4) + 1 {
        let (n, m) = (rng.below(3000) as usize, rng.below(20) as usize);
        let mut f = Frame::new(rng.bytes(n))
            .with_topic(format!("t/{}", rng.below(10)))
            .with_metadata(Bytes::from(rng.bytes(m)));
        if rng.below(2) == 0 {
            let n = f.payload.len() as u64;
            f = f.with_layout(Layout::Parts(vec![n / 2, n - n / 2]));
        }
        f.seq = rng.next() >> 1;
        let mut env = BytesMut::new();
        codec::encode_header(&f, &mut env).expect("encode");
        let parts = match rng.below(4) {
            0 => vec![wire::encode_control(&Control::Lag(rng.next())).to_vec()],
            1 => vec![wire::subscription("t/", true).to_vec()],
            _ => vec![
                f.topic.as_bytes().to_vec(),
                env.to_vec(),
                f.payload.to_vec(),
            ],
        };
        out.extend_from_slice(&frame_bytes(&parts));
    }
    out
}

fn corrupt(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..rng.below(6) {
        if b.is_empty() {
            return;
        }
        let i = rng.below(b.len() as u64) as usize;
        match rng.below(4) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = rng.next() as u8,
            2 => b.truncate(i),
            _ => {
                // A frame header announcing something large.
                let big = [0x02, 0, 0, rng.next() as u8, 0, 0, 0, 0, 0];
                b.splice(i..i, big);
            }
        }
    }
}

async fn read_all(stream: &[u8], limits: &Limits) {
    let mut r = zmtp::Reader::new(stream);
    for _ in 0..64 {
        match r.next(limits).await {
            Ok(Incoming::Message(parts)) => {
                let total: usize = parts.iter().map(|p| p.len()).sum();
                assert!(total as u64 <= limits.max_message);
                assert!(parts.len() <= limits.max_parts);
                for fw in [true, false] {
                    let _ = wire::parse_downstream(parts.clone(), fw, 1 << 20);
                }
                if let Some(p) = parts.first() {
                    let _ = wire::parse_subscription(p);
                    let _ = wire::decode_upstream_any(p);
                    let _ = wire::parse_subscriber_property(p);
                }
            }
            Ok(Incoming::Command(name, data)) => {
                assert!(name.len() + data.len() < zmtp::MAX_COMMAND);
                let _ = zmtp::parse_metadata(&data);
            }
            Ok(Incoming::Oversized(n)) => assert!(n > limits.max_message),
            Err(_) => return,
        }
    }
}

#[tokio::test]
async fn random_and_corrupted_streams_are_errors_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..3000u32 {
        let mut stream = match case % 3 {
            0 => {
                let n = rng.below(400) as usize;
                rng.bytes(n)
            }
            _ => valid_messages(&mut rng),
        };
        if case % 3 == 2 {
            corrupt(&mut rng, &mut stream);
        }
        for limits in &LIMITS {
            read_all(&stream, limits).await;
        }
        // And the handshake path: a greeting, then whatever follows.
        let mut hs = zmtp::greeting().to_vec();
        if case % 2 == 0 {
            let ready = zmtp::ready(&[("Socket-Type", b"SUB")]);
            hs.extend_from_slice(&[0x04, ready.len() as u8]);
            hs.extend_from_slice(&ready);
        }
        hs.extend_from_slice(&stream);
        corrupt(&mut rng, &mut hs);
        let mut r = zmtp::Reader::new(&hs[..]);
        if r.greeting().await.is_ok()
            && let Ok((_, data)) = r.command().await
        {
            let _ = zmtp::parse_metadata(&data);
        }
    }
}
