//! Opus bitstream facts shared by the writers, readers and bots: the duration of a packet from
//! its TOC (RFC 6716 §3.1–3.4, with the validity rules R1–R7) and the OpusHead identification
//! header (RFC 7845 §5.1) that both the Ogg and the WebM (`CodecPrivate`) files carry. Pure:
//! bytes in, values out, never a panic on any input.

/// Opus always runs at 48 kHz on the wire and in its containers (RFC 7845 §4).
pub const SAMPLE_RATE: u32 = 48_000;
/// Opus pre-skip recbot writes in its files (OpusHead, WebM CodecDelay): libopus' encoder
/// lookahead at 48 kHz, which is what WebRTC senders use, so decoded audio lines up with its
/// RTP timestamps.
pub const OPUS_PRE_SKIP: u16 = 312;
/// Largest frame payload an Opus packet can carry (RFC 6716 §3.2.1).
pub const MAX_FRAME_BYTES: usize = 1275;
/// Largest duration of one Opus packet: 120 ms at 48 kHz (RFC 6716 §3.2.5).
pub const MAX_PACKET_SAMPLES: u32 = 5760;
/// Length of an OpusHead packet with channel mapping family 0.
pub const OPUS_HEAD_LEN: usize = 19;

/// The fields of an OpusHead header recbot writes and checks (RFC 7845 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channels (1 or 2 for mapping family 0, which is all recbot writes).
    pub channels: u8,
    /// Samples (48 kHz) to drop from the start of the decoded output.
    pub pre_skip: u16,
}

impl OpusHead {
    /// The header bytes with channel mapping family 0, an informational input rate of
    /// 48 kHz and no output gain.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut head = Vec::with_capacity(OPUS_HEAD_LEN);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(self.channels);
        head.extend_from_slice(&self.pre_skip.to_le_bytes());
        head.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // input sample rate (informational)
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family
        head
    }

    /// Validates an OpusHead packet (RFC 7845 §5.1): magic, version 0.x, a non-zero channel
    /// count, and for mapping families other than 0 a mapping table that fits and points at
    /// existing streams. Errors are short static reasons; works on any bytes without panicking.
    pub fn parse(p: &[u8]) -> Result<Self, &'static str> {
        if p.len() < OPUS_HEAD_LEN || !p.starts_with(b"OpusHead") {
            return Err("first packet is not OpusHead");
        }
        if p[8] >> 4 != 0 {
            return Err("unsupported OpusHead version");
        }
        let channels = p[9];
        if channels == 0 {
            return Err("OpusHead has 0 channels");
        }
        let pre_skip = u16::from_le_bytes([p[10], p[11]]);
        match p[18] {
            0 if channels > 2 => Err("mapping family 0 allows only 1 or 2 channels"),
            0 => Ok(Self { channels, pre_skip }),
            _ => {
                // Stream count, coupled count, then one mapping byte per channel.
                let table_len = 2 + usize::from(channels);
                let Some(table) = p.get(OPUS_HEAD_LEN..OPUS_HEAD_LEN + table_len) else {
                    return Err("OpusHead mapping table is truncated");
                };
                let (streams, coupled) = (u16::from(table[0]), u16::from(table[1]));
                if streams == 0 || coupled > streams || streams + coupled > 255 {
                    return Err("OpusHead stream counts are invalid");
                }
                if table[2..]
                    .iter()
                    .any(|&m| m != 255 && u16::from(m) >= streams + coupled)
                {
                    return Err("OpusHead channel mapping is invalid");
                }
                Ok(Self { channels, pre_skip })
            }
        }
    }
}

/// The OpusHead packet (RFC 7845 §5.1) for mapping family 0: [`OpusHead::to_bytes`].
pub fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    OpusHead { channels, pre_skip }.to_bytes()
}

/// Duration in 48 kHz samples of one Opus packet, or `None` when the packet breaks any of the
/// requirements R1–R7 of RFC 6716 §3.4 (empty, frame longer than 1275 bytes, code 1 with an
/// odd payload, code 2/3 frame lengths that do not fit, code 3 with zero frames or more than
/// 120 ms, padding that overruns the packet).
///
/// Duration = frame size from the TOC configuration × frame count (RFC 6716 §3.1). Works on
/// any bytes without panicking.
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let (&toc, rest) = packet.split_first()?;
    let frame = frame_samples(toc);
    let frames = match toc & 0x03 {
        0 => (rest.len() <= MAX_FRAME_BYTES).then_some(1)?,
        1 => (rest.len() % 2 == 0 && rest.len() / 2 <= MAX_FRAME_BYTES).then_some(2)?,
        2 => {
            let (first, used) = frame_length(rest)?;
            let remaining = rest.len() - used;
            (first <= remaining && remaining - first <= MAX_FRAME_BYTES).then_some(2)?
        }
        _ => code3_frame_count(rest, frame)?,
    };
    let total = frame * frames;
    (total <= MAX_PACKET_SAMPLES).then_some(total)
}

/// Samples per frame at 48 kHz for a TOC byte's configuration (RFC 6716 §3.1, Table 2).
fn frame_samples(toc: u8) -> u32 {
    let config = usize::from(toc >> 3);
    match config {
        0..=11 => [480, 960, 1920, 2880][config % 4], // SILK: 10, 20, 40, 60 ms
        12..=15 => [480, 960][config % 2],            // Hybrid: 10, 20 ms
        _ => [120, 240, 480, 960][config % 4],        // CELT: 2.5, 5, 10, 20 ms
    }
}

/// Reads a frame length (RFC 6716 §3.2.1): returns (length, bytes used).
fn frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    match bytes {
        [b0, ..] if *b0 < 252 => Some((usize::from(*b0), 1)),
        [b0, b1, ..] => Some((usize::from(*b1) * 4 + usize::from(*b0), 2)),
        _ => None,
    }
}

/// Validates the part of a code 3 packet after the TOC (RFC 6716 §3.2.5, R5–R7) and returns
/// its frame count.
fn code3_frame_count(rest: &[u8], frame: u32) -> Option<u32> {
    let (&count_byte, mut body) = rest.split_first()?;
    let vbr = count_byte & 0x80 != 0;
    let has_padding = count_byte & 0x40 != 0;
    let count = u32::from(count_byte & 0x3F);
    if count == 0 || count * frame > MAX_PACKET_SAMPLES {
        return None;
    }
    let mut padding = 0usize;
    if has_padding {
        loop {
            let (&b, tail) = body.split_first()?;
            body = tail;
            padding += if b == 255 { 254 } else { usize::from(b) };
            if b != 255 {
                break;
            }
        }
    }
    let data_len = body.len().checked_sub(padding)?;
    let mut data = body.get(..data_len)?;
    let n = count as usize;
    if vbr {
        // Lengths of all frames but the last lead the data; the last frame takes the rest.
        let mut lengths = 0usize;
        for _ in 1..n {
            let (len, used) = frame_length(data)?;
            data = data.get(used..)?;
            lengths += len;
        }
        let last = data.len().checked_sub(lengths)?;
        (last <= MAX_FRAME_BYTES).then_some(count)
    } else {
        (data.len() % n == 0 && data.len() / n <= MAX_FRAME_BYTES).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_head_round_trips_and_is_checked() {
        let head = OpusHead {
            channels: 2,
            pre_skip: 312,
        };
        let bytes = head.to_bytes();
        assert_eq!(bytes.len(), OPUS_HEAD_LEN);
        assert_eq!(&bytes[..8], b"OpusHead");
        assert_eq!(bytes, opus_head(2, 312));
        assert_eq!(OpusHead::parse(&bytes), Ok(head));
        assert!(OpusHead::parse(&bytes[..18]).is_err());
        let mut three = opus_head(3, 0);
        assert!(OpusHead::parse(&three).is_err(), "family 0 with 3 channels");
        three[9] = 0;
        assert!(OpusHead::parse(&three).is_err(), "0 channels");
        // Family 1 needs its mapping table.
        let mut fam1 = opus_head(2, 0);
        fam1[18] = 1;
        assert!(OpusHead::parse(&fam1).is_err());
        fam1.extend_from_slice(&[1, 1, 0, 1]);
        assert_eq!(
            OpusHead::parse(&fam1),
            Ok(OpusHead {
                channels: 2,
                pre_skip: 0
            })
        );
    }

    #[test]
    fn packet_durations_from_the_toc() {
        // Config 31 (CELT 20 ms), code 0: one frame.
        assert_eq!(opus_packet_samples(&[0xF8, 0xFF, 0xFE]), Some(960));
        // Config 0 (SILK 10 ms), code 1: two equal frames.
        assert_eq!(opus_packet_samples(&[0x01, 1, 2]), Some(960));
        // Code 1 with an odd payload breaks R3.
        assert_eq!(opus_packet_samples(&[0x01, 1, 2, 3]), None);
        // Config 16 (CELT 2.5 ms), code 3, 4 CBR frames of 1 byte.
        assert_eq!(opus_packet_samples(&[0x83, 4, 1, 2, 3, 4]), Some(480));
        // Code 3 with zero frames breaks R5; empty packets break R1.
        assert_eq!(opus_packet_samples(&[0x83, 0]), None);
        assert_eq!(opus_packet_samples(&[]), None);
    }
}
