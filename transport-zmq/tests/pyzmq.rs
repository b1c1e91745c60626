//! Interoperability with libzmq, through pyzmq (`tests/pyzmq_peer.py`, which
//! holds the README's Python decoder and encoder): a plain pyzmq SUB receives
//! a framewire publisher's frames, a framewire subscriber receives a plain
//! pyzmq PUB's. Needs `python3 -m pip install pyzmq` (CI installs it; without
//! it these tests print SKIPPED and pass).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use transport_core::{
    Endpoint, Error, Frame, Layout, PixelFormat, PublishOptions, Publisher, SubscribeOptions,
    Subscriber, Transport, pattern,
};
use transport_zmq::ZmqTransport;

const T: Duration = Duration::from_secs(20);

fn script() -> String {
    format!("{}/tests/pyzmq_peer.py", env!("CARGO_MANIFEST_DIR"))
}

fn have_pyzmq() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import zmq"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: python3 with pyzmq is not installed (python3 -m pip install pyzmq); \
             CI installs it"
        );
    }
    ok
}

/// Kills and reaps the child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let k = format!("\"{key}\": ");
    let start = json.find(&k).map(|i| i + k.len()).expect(key);
    let rest = &json[start..];
    let end = rest.find([',', '}']).expect("end of the field");
    rest[..end].trim_matches('"')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pyzmq_sub_receives_a_framewire_publishers_frames() {
    if !have_pyzmq() {
        return;
    }
    let ep = Endpoint::parse("zmq+tcp://127.0.0.1:0").expect("url");
    let mut p = tokio::time::timeout(T, ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("in time")
        .expect("publish");
    let addr = p
        .endpoint()
        .url()
        .trim_start_matches("zmq+")
        .split('?')
        .next()
        .expect("addr")
        .to_owned();
    let n = 5u64;
    let mut py = Reaped(
        Command::new("python3")
            .args([&script(), "sub", &addr, "cam/", &n.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let out = lines(&mut py.0);
    // A plain SUB counts once its subscription arrived: nothing is lost to
    // the slow-joiner window.
    tokio::time::timeout(T, p.wait_for_subscribers(1, T))
        .await
        .expect("in time")
        .expect("the pyzmq SUB subscribed");
    let mut sums = Vec::new();
    for i in 0..n * 2 {
        let len = 640 * 480 * 3;
        let f = if i % 2 == 0 {
            let payload = pattern::make(i, len);
            sums.push(
                payload
                    .iter()
                    .fold(0u32, |a, &b| a.wrapping_add(u32::from(b))),
            );
            Frame::new(payload)
                .with_topic("cam/0")
                .with_layout(Layout::Image {
                    width: 640,
                    height: 480,
                    format: PixelFormat::Rgb8,
                })
        } else {
            Frame::new(pattern::make(i, 10)).with_topic("imu")
        };
        p.send(f).await.expect("send");
    }
    for (k, sum) in sums.iter().enumerate() {
        let line =
            tokio::task::block_in_place(|| out.recv_timeout(T)).expect("a line from the pyzmq SUB");
        let seq = 2 * k as u64;
        assert_eq!(field(&line, "seq"), seq.to_string(), "{line}");
        assert_eq!(field(&line, "topic"), "cam/0", "{line}");
        assert_eq!(field(&line, "topic_part"), "cam/0", "{line}");
        assert_eq!(field(&line, "kind"), "image", "{line}");
        assert_eq!(field(&line, "width"), "640", "{line}");
        assert_eq!(field(&line, "format"), "2", "{line}");
        assert_eq!(field(&line, "len"), (640 * 480 * 3).to_string(), "{line}");
        assert_eq!(field(&line, "sum"), sum.to_string(), "{line}");
        assert_ne!(field(&line, "timestamp_ns"), "0", "{line}");
    }
    let st = py.0.wait().expect("python exits");
    assert!(st.success(), "{st:?}");
    p.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framewire_subscriber_receives_a_pyzmq_publishers_frames() {
    if !have_pyzmq() {
        return;
    }
    let mut py = Reaped(
        Command::new("python3")
            .args([&script(), "pub"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let out = lines(&mut py.0);
    let line = tokio::task::block_in_place(|| out.recv_timeout(T)).expect("the PUB's port");
    let port = line.strip_prefix("PORT ").expect("PORT line").trim();
    let ep = Endpoint::parse(&format!("zmq+tcp://127.0.0.1:{port}")).expect("url");
    let opts = SubscribeOptions::default().topic_prefix("cam/");
    let mut s = tokio::time::timeout(T, ZmqTransport.subscribe(&ep, &opts))
        .await
        .expect("in time: a plain PUB sends no welcome, none is awaited")
        .expect("subscribe");
    let (mut frames, mut foreign) = (Vec::new(), 0);
    let deadline = Instant::now() + T;
    while frames.len() < 8 || foreign == 0 {
        assert!(Instant::now() < deadline, "{frames:?} {foreign}");
        match tokio::time::timeout(T, s.recv()).await.expect("in time") {
            Ok(f) => {
                assert_eq!(f.topic, "cam/0");
                assert_eq!(&f.metadata[..], b"from pyzmq");
                assert_eq!(
                    f.layout,
                    Layout::Image {
                        width: 4,
                        height: 2,
                        format: PixelFormat::Rgb8
                    }
                );
                let want: Vec<u8> = (0..24).map(|i| ((f.seq + i) & 0xFF) as u8).collect();
                assert_eq!(&f.payload[..], &want[..]);
                frames.push(f.seq);
            }
            Err(Error::Protocol { message: why, .. }) => {
                assert!(why.contains("framewire envelope"), "{why}");
                foreign += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
}
