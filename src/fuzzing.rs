//! Fuzz harnesses: arbitrary bytes driven through the code that takes input from the network
//! (VP8 assembly, signaling parsing) or that must always produce readable files (the Ogg and
//! WebM writers). The `fuzz/` targets call these; `tests` below replays the inputs the fuzzers
//! once found, kept in `fuzz/regressions/`.
//!
//! Each harness asserts the property it checks (no panic; a written file reads back with what
//! was written), so a fuzzer finds violations, not only crashes.

use crate::media::vp8::{Vp8Assembler, Vp8Event};
use crate::record::ogg::{read_ogg_opus, OggOpusWriter, PacketOutcome};
use crate::record::webm::{WebmTrack, WebmWriter};
use crate::record::webm_reader::read_webm;
use std::time::{Duration, Instant};

/// Reads little pieces off the front of the input.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// RTP packets from the bytes (sequence and timestamp steps, marker, payload) into a
/// [`Vp8Assembler`], with time moving on: every emitted frame must be non-empty, keyframes
/// must carry a size, and nothing may panic.
pub fn vp8_assembler(data: &[u8]) {
    let start = Instant::now();
    let mut input = Input(data);
    let mut assembler = Vp8Assembler::new(Duration::from_millis(100));
    let (mut seq, mut ts, mut now) = (0u16, 0u32, start);
    let check = |event: Vp8Event| {
        if let Vp8Event::Frame(frame) = event {
            assert!(!frame.data.is_empty());
            if frame.keyframe {
                assert!(frame.size.is_some());
            }
        }
    };
    while let (Some(step), Some(flags), Some(len)) = (input.u8(), input.u8(), input.u8()) {
        seq = seq.wrapping_add(u16::from(step & 0x0f)).wrapping_sub(2);
        if flags & 0x80 != 0 {
            ts = ts.wrapping_add(3000 * u32::from(flags & 0x07));
        }
        let payload = input.bytes(usize::from(len));
        now += Duration::from_millis(u64::from(step >> 4) * 10);
        assembler.push(seq, ts, flags & 0x40 != 0, payload, now);
        while let Some(event) = assembler.poll(now) {
            check(event);
        }
    }
    for event in assembler.finish() {
        check(event);
    }
}

/// The signaling parser on arbitrary text: never panics.
pub fn signaling(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::signal::protocol::parse_client_message(&text);
}

/// Opus packets with arbitrary timestamps into the Ogg writer: the file always reads back,
/// with an end-of-stream page and a duration covering what was written.
pub fn ogg_writer(data: &[u8]) {
    let mut input = Input(data);
    let Some(channels) = input.u8().map(|c| 1 + (c & 1)) else {
        return;
    };
    let Ok(mut writer) = OggOpusWriter::new(Vec::new(), 7, channels, 312) else {
        return;
    };
    let mut pts = 0u64;
    let mut written = 0u64;
    while let (Some(step), Some(len)) = (input.u16(), input.u8()) {
        // Mostly forward, sometimes back (late packets), sometimes a jump (DTX).
        pts = match step >> 14 {
            0 => pts.saturating_add(960),
            1 => pts.saturating_sub(u64::from(step & 0x3fff)),
            _ => pts.saturating_add(u64::from(step & 0x3fff) * 48),
        };
        let packet = input.bytes(usize::from(len));
        match writer.write_packet(packet, pts) {
            Ok(PacketOutcome::Written { .. }) => written += 1,
            Ok(PacketOutcome::Dropped(_)) => {}
            Err(e) => panic!("writing to memory failed: {e}"),
        }
    }
    let end = writer.duration_samples() + 312;
    let Ok(bytes) = writer.finalize(Some(end)) else {
        panic!("finalize to memory failed");
    };
    let info = match read_ogg_opus(std::io::Cursor::new(&bytes)) {
        Ok(info) => info,
        Err(e) => panic!("the writer's own file does not read back: {e}"),
    };
    assert!(info.eos);
    assert!(info.packets.len() as u64 >= written);
}

/// Frames of two tracks with arbitrary timestamps into the WebM writer: the file always
/// reads back, with every accepted frame, Cues and Duration.
pub fn webm_writer(data: &[u8]) {
    let mut input = Input(data);
    let tracks = [
        WebmTrack::Video {
            number: 1,
            width: 320,
            height: 240,
        },
        WebmTrack::Audio {
            number: 2,
            channels: 1,
            pre_skip: 312,
        },
    ];
    let Ok(mut writer) = WebmWriter::new(std::io::Cursor::new(Vec::new()), &tracks) else {
        return;
    };
    let mut ts = [0u64; 2];
    let mut accepted = 0usize;
    while let (Some(head), Some(step), Some(len)) = (input.u8(), input.u16(), input.u8()) {
        let track = usize::from(head & 1);
        // Mostly forward; a set high bit makes a big jump or a step back (written 1 ms on).
        ts[track] = if step & 0x8000 != 0 {
            ts[track].wrapping_add(u64::from(step & 0x7fff) * 1000) % (1 << 40)
        } else {
            ts[track] + u64::from(step & 0xff)
        };
        let frame = input.bytes(usize::from(len));
        let keyframe = head & 2 != 0;
        if writer
            .write_frame(track as u64 + 1, ts[track], keyframe, frame)
            .is_ok()
        {
            accepted += 1;
        }
        if head & 4 != 0 {
            let _ = writer.flush();
        }
    }
    let last = ts[0].max(ts[1]);
    let Ok(out) = writer.finalize(last + 1) else {
        panic!("finalize to memory failed");
    };
    let bytes = out.into_inner();
    let info = match read_webm(std::io::Cursor::new(&bytes)) {
        Ok(info) => info,
        Err(e) => panic!("the writer's own file does not read back: {e}"),
    };
    assert_eq!(info.blocks.len(), accepted);
    for track in [1, 2] {
        let ts: Vec<i64> = info
            .blocks
            .iter()
            .filter(|b| b.track == track)
            .map(|b| b.ts_ms)
            .collect();
        assert!(ts.windows(2).all(|p| p[1] > p[0]), "track {track}: {ts:?}");
    }
    assert!(info.duration_ms.is_some());
}

/// The file readers on arbitrary bytes: never panic.
pub fn readers(data: &[u8]) {
    let _ = read_webm(std::io::Cursor::new(data));
    let _ = read_ogg_opus(std::io::Cursor::new(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every input kept in `fuzz/regressions/<harness>/`.
    #[test]
    fn regressions_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        type Harness = (&'static str, fn(&[u8]));
        let harnesses: [Harness; 5] = [
            ("vp8_assembler", vp8_assembler),
            ("signaling", signaling),
            ("ogg_writer", ogg_writer),
            ("webm_writer", webm_writer),
            ("readers", readers),
        ];
        for (name, harness) in harnesses {
            let Ok(entries) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap();
                harness(&bytes);
            }
        }
    }

    /// A quick deterministic sweep so the harnesses run in every `cargo test`.
    #[test]
    fn harnesses_survive_pseudo_random_input() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            let len = 16 + (round * 37) % 2000;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            vp8_assembler(&data);
            signaling(&data);
            ogg_writer(&data);
            webm_writer(&data);
            readers(&data);
        }
    }
}
