//! Ogg Opus (RFC 7845) writer and reader.
//!
//! The writer turns a sequence of Opus packets, each with its position on a 48 kHz timeline
//! (`pts`), into an Ogg Opus file whose timeline keeps real time: gaps (DTX, loss) are filled
//! with packets that decode to digital silence, never by a granule-position jump that the
//! packets do not account for. Late or duplicate packets are dropped, never written.
//!
//! Time model (RFC 7845 §4): the granule position of each audio page is the number of 48 kHz
//! samples decoded from all packets completed on or before that page, *including* the `P`
//! pre-skip samples that players discard. The caller's `pts` lives on that same decoded-sample
//! timeline (first packet at 0), so the granule after a packet is its `pts` + its samples, and
//! the stream starts at time 0 (no starting offset; ffprobe shows a start time of 0). Players
//! drop the first `P` decoded samples (decoder warm-up), so the sample at `pts` is played at
//! `pts − P` and the playback length is final granule − `P`.
//!
//! The reader parses a whole Ogg Opus file back into packets with their granule positions; it
//! validates the headers and never panics, whatever the input.

use std::borrow::Cow;
use std::io::{self, Read, Seek, Write};

use ogg::{OggReadError, PacketReader, PacketWriteEndInfo, PacketWriter};

use crate::media::opus::{opus_head, opus_packet_samples, OpusHead, SAMPLE_RATE};
/// End a page after this many packets (≈ 1 s of 20 ms packets).
const MAX_PAGE_PACKETS: u32 = 50;
/// End a page once it holds this much audio (1 s).
const MAX_PAGE_SAMPLES: u64 = 48_000;
/// Lacing values per Ogg page (RFC 3533).
const MAX_PAGE_SEGMENTS: usize = 255;
/// Largest gap (24 h of audio) the writer fills with silence. A packet further ahead than this
/// is dropped ([`DropReason::TooFarAhead`]): it can only come from a broken timestamp mapping,
/// and filling it would write gigabytes.
pub const MAX_FILL_SAMPLES: u64 = 24 * 3600 * SAMPLE_RATE as u64;
/// Vendor string of the OpusTags header.
const VENDOR: &str = "recbot";
/// User comments of the OpusTags header.
const COMMENTS: [&str; 1] = ["ENCODER=recbot"];

/// Packets that fill gaps: one-frame CELT-only fullband packets (TOC configs 31, 30, 29, 28:
/// 20, 10, 5 and 2.5 ms; frame count code 0) whose range-coded payload `FF FE` sets the CELT
/// silence flag. These are the exact bytes libopus emits when it encodes digital silence (a test
/// checks this against `opus::Encoder`), and libopus and ffmpeg both decode them to exact zeros.
///
/// Why not the RFC 7845 §4.1 alternative, a TOC byte with a zero-length frame? Decoders run
/// packet-loss concealment on those: after SILK audio libopus produces comfort noise for the
/// whole gap (measured RMS ≈ 350 over a 2 s gap after a 440 Hz tone), while ffmpeg's native
/// decoder outputs zeros, so the same file would sound different in different players. Encoded
/// silence is deterministic: a short fade of the previous frame's overlap, then zeros.
///
/// Each row: samples per packet, then the packet for mono and for stereo (stereo flag set).
static SILENCE_PACKETS: [(u64, [[u8; 3]; 2]); 4] = [
    (960, [[0xF8, 0xFF, 0xFE], [0xFC, 0xFF, 0xFE]]),
    (480, [[0xF0, 0xFF, 0xFE], [0xF4, 0xFF, 0xFE]]),
    (240, [[0xE8, 0xFF, 0xFE], [0xEC, 0xFF, 0xFE]]),
    (120, [[0xE0, 0xFF, 0xFE], [0xE4, 0xFF, 0xFE]]),
];
/// Index of the 2.5 ms row in [`SILENCE_PACKETS`], the smallest step of the fill.
const SHORTEST_SILENCE: usize = 3;

/// Errors of the Ogg Opus writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum OggError {
    /// Writing to or reading from the underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The writer only does channel mapping family 0, which allows 1 or 2 channels.
    #[error("unsupported channel count {0} (only 1 or 2 are supported)")]
    UnsupportedChannels(u8),
    /// An earlier write failed part-way, so the output may end in a partial page; the writer
    /// refuses further work instead of appending pages that would not line up.
    #[error("the writer failed earlier and can no longer be used")]
    Broken,
    /// The input is not a well-formed Ogg bitstream.
    #[error("invalid Ogg framing: {0}")]
    Framing(OggReadError),
    /// The Ogg stream does not start with valid Opus headers (RFC 7845 §5).
    #[error("not a valid Ogg Opus stream: {0}")]
    InvalidHeader(&'static str),
    /// An audio packet of the stream is not a valid Opus packet (RFC 6716 §3.4).
    #[error("audio packet #{index} is not a valid Opus packet")]
    InvalidPacket {
        /// Zero-based index of the packet among the audio packets.
        index: u64,
    },
}

impl From<OggReadError> for OggError {
    fn from(e: OggReadError) -> Self {
        match e {
            OggReadError::ReadError(io) => OggError::Io(io),
            other => OggError::Framing(other),
        }
    }
}

/// What [`OggOpusWriter::write_packet`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketOutcome {
    /// The packet is in the stream. `filled_samples` of silence (48 kHz) were inserted before it
    /// to fill a gap between the previous end of the stream and its `pts`.
    Written {
        /// Samples of silence inserted before this packet (0 when it followed on directly).
        filled_samples: u64,
    },
    /// The packet was not written; the stream is unchanged.
    Dropped(DropReason),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The packet starts before the current end of the stream (late, reordered or duplicate).
    Late,
    /// The bytes are not a valid Opus packet (RFC 6716 §3.4).
    Invalid,
    /// The packet starts more than [`MAX_FILL_SAMPLES`] after the end of the stream.
    TooFarAhead,
}

/// A `Write` adapter that counts the bytes that went through it.
struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A packet accepted but not yet handed to the page writer: the writer holds back the newest
/// packet so that it can still end the page with it (on `flush`, `finalize`, or when the next
/// packet would not fit).
struct Pending {
    data: Cow<'static, [u8]>,
    samples: u64,
    /// Granule position of a page that this packet completes.
    granule: u64,
}

/// What the open (not yet written) page holds.
#[derive(Default, Clone, Copy)]
struct PageState {
    segments: usize,
    packets: u32,
    samples: u64,
}

/// Lacing values a packet of `len` bytes needs.
fn segments_for(len: usize) -> usize {
    len / 255 + 1
}

/// Streaming Ogg Opus writer (RFC 7845) for one logical stream, channel mapping family 0.
///
/// Invariants:
/// - page 1 holds only OpusHead, page 2 only OpusTags, both with granule position 0; audio
///   starts on a fresh page;
/// - every audio page's granule position is the samples of all packets completed on it and
///   before it, pre-skip included (RFC 7845 §4; pages on which no packet ends carry −1, as Ogg
///   requires); only the final page may be lower (end trimming, RFC 7845 §4.4);
/// - the packets' durations always add up to the timeline: gaps are filled with silence
///   packets, so the granule after the newest packet == the `pts` at which the next packet
///   would follow on == `duration_samples()` + `pre_skip` (once past the pre-skip);
/// - a page ends after at most 50 packets or 1 s of audio and never exceeds 255 lacing values
///   (a packet too large for one page continues on the next);
/// - at most one packet (the newest) is held in memory outside complete pages; `flush()` writes
///   it out, so a file cut right after `flush()` is a valid stream without an EOS page;
/// - after an I/O error every call returns [`OggError::Broken`].
///
/// For crash safety the owner should call [`flush`](Self::flush) about once a second: pages end
/// on their own only as packets arrive, and a silent peer sends none.
pub struct OggOpusWriter<W: Write> {
    pages: PacketWriter<'static, CountingWriter<W>>,
    serial: u32,
    /// Column of [`SILENCE_PACKETS`] for this channel count (0 mono, 1 stereo).
    channel_index: usize,
    pre_skip: u16,
    /// Samples of all packets accepted so far (written or pending), pre-skip included = `pts`
    /// of the stream end = granule position after the newest packet.
    end: u64,
    pending: Option<Pending>,
    page: PageState,
    packets_written: u64,
    filled_samples: u64,
    broken: bool,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream on `out`: writes the OpusHead page (version 1, `channels`, `pre_skip`,
    /// input sample rate 48000, output gain 0, mapping family 0) and the OpusTags page (vendor
    /// "recbot", one comment `ENCODER=recbot`), then flushes `out`.
    ///
    /// `serial` is the Ogg stream serial number; `channels` must be 1 or 2.
    pub fn new(out: W, serial: u32, channels: u8, pre_skip: u16) -> Result<Self, OggError> {
        if !(1..=2).contains(&channels) {
            return Err(OggError::UnsupportedChannels(channels));
        }
        let mut pages = PacketWriter::new(CountingWriter {
            inner: out,
            bytes: 0,
        });
        pages.write_packet(
            opus_head(channels, pre_skip),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        pages.write_packet(opus_tags(), serial, PacketWriteEndInfo::EndPage, 0)?;
        pages.inner_mut().flush()?;
        Ok(Self {
            pages,
            serial,
            channel_index: usize::from(channels - 1),
            pre_skip,
            end: 0,
            pending: None,
            page: PageState::default(),
            packets_written: 0,
            filled_samples: 0,
            broken: false,
        })
    }

    /// Adds one Opus packet whose first sample sits at `pts`: its position in 48 kHz samples on
    /// the decoded-sample timeline, which starts at the file's first decoded sample and counts
    /// the pre-skip samples players discard (the first packet normally has pts 0, and a later
    /// one makes the stream start with silence). The page that completes the packet gets the
    /// granule position `pts` + the packet's samples. The caller unwraps RTP timestamps to 64 bits and maps them with a fixed
    /// offset: a `pts` that wobbles by even one sample against the packets' durations would
    /// make the writer drop a packet as late.
    ///
    /// The packet's duration comes from its TOC (RFC 6716 §3.1). Outcomes:
    /// - `pts` before the current end (late, reordered, duplicate): `Dropped(Late)`;
    /// - bytes that break RFC 6716 §3.4 (empty, bad frame lengths, code 3 with a zero or
    ///   too large frame count, ...): `Dropped(Invalid)`;
    /// - `pts` more than [`MAX_FILL_SAMPLES`] beyond the end: `Dropped(TooFarAhead)`;
    /// - otherwise the gap up to `pts` is filled with silence packets, largest first (20, 10,
    ///   5, 2.5 ms), and the packet is written: `Written { filled_samples }`.
    ///
    /// A gap remainder under 2.5 ms (120 samples) cannot be expressed in Opus packets and is
    /// absorbed: the packet is then written at the current end, i.e. less than 2.5 ms before
    /// its `pts`. This shift does not accumulate: each later gap is measured against the
    /// caller's `pts` again.
    ///
    /// Filling allocates nothing per gap: the silence packets are static bytes and pages are
    /// written out as they fill. Never panics, whatever `data` and `pts` are.
    pub fn write_packet(&mut self, data: &[u8], pts: u64) -> Result<PacketOutcome, OggError> {
        self.check_usable()?;
        let Some(samples) = opus_packet_samples(data) else {
            return Ok(PacketOutcome::Dropped(DropReason::Invalid));
        };
        if pts < self.end {
            return Ok(PacketOutcome::Dropped(DropReason::Late));
        }
        let gap = pts - self.end;
        if gap > MAX_FILL_SAMPLES {
            return Ok(PacketOutcome::Dropped(DropReason::TooFarAhead));
        }
        let filled_samples = self.fill(gap)?;
        self.push(Cow::Owned(data.to_vec()), u64::from(samples))?;
        self.packets_written += 1;
        Ok(PacketOutcome::Written { filled_samples })
    }

    /// Ends the current page now, so that every packet accepted so far is in a complete page,
    /// and flushes `out`. A process killed right after leaves a file that decoders read up to
    /// here without error (it only lacks the end-of-stream page).
    pub fn flush(&mut self) -> Result<(), OggError> {
        self.check_usable()?;
        if let Some(last) = self.pending.take() {
            self.emit(last, PacketWriteEndInfo::EndPage)?;
        }
        let flushed = self.pages.inner_mut().flush();
        self.mark_broken_on_error(flushed)?;
        Ok(())
    }

    /// Playback duration (48 kHz samples) of the stream so far: the samples of all packets
    /// accepted (= the granule position if the stream ended now) minus pre-skip, or 0 while
    /// the stream is still shorter than its pre-skip. This is what players play and what
    /// opusinfo reports as "Playback length"; the `pts` at which the next packet follows on
    /// without a gap is this plus pre-skip (once the stream is past the pre-skip).
    pub fn duration_samples(&self) -> u64 {
        self.end.saturating_sub(u64::from(self.pre_skip))
    }

    /// Bytes written to the output so far (complete pages only; the newest packet may still be
    /// held back until the page ends).
    pub fn bytes_written(&self) -> u64 {
        self.pages.inner().bytes
    }

    /// Caller packets accepted by [`write_packet`](Self::write_packet) (`Written`), excluding
    /// silence fill.
    pub fn packets_written(&self) -> u64 {
        self.packets_written
    }

    /// Samples (48 kHz) of silence inserted so far to fill gaps, including the extension done
    /// by [`finalize`](Self::finalize).
    pub fn filled_samples(&self) -> u64 {
        self.filled_samples
    }

    /// Ends the stream and returns the inner writer.
    ///
    /// `end_pts` is on the same decoded-sample timeline as the packets' `pts` (pre-skip
    /// included). If it is given and lies beyond the current end (by at most
    /// [`MAX_FILL_SAMPLES`]; a larger value is ignored), the stream is first extended with
    /// silence so that it ends exactly at `end_pts`: whole silence packets, then one 2.5 ms
    /// packet cut to the exact sample by end trimming (RFC 7845 §4.4: a final granule smaller
    /// than the packets' total). Then the last page is written with the end-of-stream flag and
    /// the final granule position (`end_pts`, or the current end when `end_pts` is not beyond
    /// it), and `out` is flushed. The playback duration is final granule − pre-skip.
    ///
    /// When no packet is held back (no audio at all, or `flush()` just ended the last page), the
    /// EOS page carries one 2.5 ms silence packet trimmed away entirely, so every stream ends
    /// with a valid EOS page and the duration does not change. A stream shorter than `pre_skip`
    /// or 2.5 ms (e.g. one without audio) is padded with silence to that length, so that the
    /// playback duration (final granule − pre-skip) is never negative and the final granule
    /// never 0.
    pub fn finalize(mut self, end_pts: Option<u64>) -> Result<W, OggError> {
        self.check_usable()?;
        let target = match end_pts {
            Some(e) if e > self.end && e - self.end <= MAX_FILL_SAMPLES => e,
            _ => self.end,
        }
        // A final granule below the pre-skip would mean a negative playback length, and a final
        // granule of 0 looks like a broken encoder: opusinfo reports both.
        .max(u64::from(self.pre_skip))
        .max(SILENCE_PACKETS[SHORTEST_SILENCE].0);
        self.fill(target - self.end)?;
        let short = target - self.end; // < 120: what whole silence packets could not cover
        let last = match self.pending.take() {
            Some(last) if short == 0 => last,
            held => {
                let (samples, packets) = &SILENCE_PACKETS[SHORTEST_SILENCE];
                let data: &'static [u8] = &packets[self.channel_index];
                if let Some(held) = held {
                    self.emit_deciding_page_end(held, segments_for(data.len()))?;
                }
                self.filled_samples += short;
                self.end = target;
                Pending {
                    data: Cow::Borrowed(data),
                    samples: *samples,
                    granule: target,
                }
            }
        };
        self.emit(last, PacketWriteEndInfo::EndStream)?;
        let flushed = self.pages.inner_mut().flush();
        self.mark_broken_on_error(flushed)?;
        Ok(self.pages.into_inner().inner)
    }

    fn check_usable(&self) -> Result<(), OggError> {
        if self.broken {
            Err(OggError::Broken)
        } else {
            Ok(())
        }
    }

    fn mark_broken_on_error<T>(&mut self, r: io::Result<T>) -> Result<T, OggError> {
        r.map_err(|e| {
            self.broken = true;
            OggError::Io(e)
        })
    }

    /// Appends silence packets covering `gap` rounded down to a multiple of 2.5 ms; returns the
    /// samples added.
    fn fill(&mut self, gap: u64) -> Result<u64, OggError> {
        let mut left = gap;
        for (samples, packets) in &SILENCE_PACKETS {
            let data: &'static [u8] = &packets[self.channel_index];
            while left >= *samples {
                self.push(Cow::Borrowed(data), *samples)?;
                left -= samples;
            }
        }
        let filled = gap - left;
        self.filled_samples += filled;
        Ok(filled)
    }

    /// Accepts a packet at the end of the stream: the previously held packet goes to the page
    /// writer and this one is held back.
    fn push(&mut self, data: Cow<'static, [u8]>, samples: u64) -> Result<(), OggError> {
        if let Some(held) = self.pending.take() {
            self.emit_deciding_page_end(held, segments_for(data.len()))?;
        }
        self.end = self.end.saturating_add(samples);
        self.pending = Some(Pending {
            data,
            samples,
            granule: self.end,
        });
        Ok(())
    }

    /// Writes `packet`, ending the page after it when the page is full by packet count or
    /// duration, or when the next packet (`next_segments` lacing values) would not fit.
    fn emit_deciding_page_end(
        &mut self,
        packet: Pending,
        next_segments: usize,
    ) -> Result<(), OggError> {
        let after = self.page_after(&packet, PacketWriteEndInfo::NormalPacket);
        let end_page = after.packets >= MAX_PAGE_PACKETS
            || after.samples >= MAX_PAGE_SAMPLES
            || after.segments + next_segments > MAX_PAGE_SEGMENTS;
        let info = if end_page {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.emit(packet, info)
    }

    /// The open page's state after `packet` is written with `info`, mirroring how the page
    /// writer lays out segments: it writes a page by itself whenever 255 lacing values fill up.
    fn page_after(&self, packet: &Pending, info: PacketWriteEndInfo) -> PageState {
        let total = self.page.segments + segments_for(packet.data.len());
        let ends_page = info != PacketWriteEndInfo::NormalPacket;
        if ends_page || total.is_multiple_of(MAX_PAGE_SEGMENTS) {
            PageState::default()
        } else if total > MAX_PAGE_SEGMENTS {
            // The packet spilled over: only its tail is on the open page.
            PageState {
                segments: total % MAX_PAGE_SEGMENTS,
                packets: 1,
                samples: packet.samples,
            }
        } else {
            PageState {
                segments: total,
                packets: self.page.packets + 1,
                samples: self.page.samples + packet.samples,
            }
        }
    }

    fn emit(&mut self, packet: Pending, info: PacketWriteEndInfo) -> Result<(), OggError> {
        let after = self.page_after(&packet, info);
        let written = self
            .pages
            .write_packet(packet.data, self.serial, info, packet.granule);
        self.mark_broken_on_error(written)?;
        self.page = after;
        Ok(())
    }
}

/// The OpusTags packet (RFC 7845 §5.2).
fn opus_tags() -> Vec<u8> {
    let mut tags = Vec::new();
    tags.extend_from_slice(b"OpusTags");
    push_len_prefixed(&mut tags, VENDOR.as_bytes());
    tags.extend_from_slice(&(COMMENTS.len() as u32).to_le_bytes());
    for comment in COMMENTS {
        push_len_prefixed(&mut tags, comment.as_bytes());
    }
    tags
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // The strings are short compile-time constants.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// One audio packet read back from an Ogg Opus stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpusPacket {
    /// The Opus packet bytes.
    pub data: Vec<u8>,
    /// Granule position of the page this packet ends, if it is the last packet completed on
    /// that page; `None` otherwise.
    pub granule: Option<u64>,
    /// Duration in 48 kHz samples, from the TOC.
    pub samples: u32,
}

/// An Ogg Opus stream read back: header fields, audio packets and how the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpusInfo {
    /// Channel count from OpusHead.
    pub channels: u8,
    /// Pre-skip from OpusHead (48 kHz samples the player discards at the start).
    pub pre_skip: u16,
    /// Serial number of the logical stream.
    pub serial: u32,
    /// Audio packets in stream order (the two header packets are not included).
    pub packets: Vec<OggOpusPacket>,
    /// Granule position of the last page that completed a packet, if any.
    pub final_granule: Option<u64>,
    /// Whether the stream ended with an end-of-stream page.
    pub eos: bool,
    /// Whether the input goes on after the last complete page of an unfinished stream (a page
    /// cut short by a crash, or junk); the packets of the complete pages are still returned.
    pub truncated: bool,
}

impl OggOpusInfo {
    /// Playback duration in 48 kHz samples: final granule − pre-skip (RFC 7845 §4: the granule
    /// counts every decoded sample, including the pre-skip samples players discard). `None`
    /// without a final granule or if it is below pre-skip.
    pub fn duration_samples(&self) -> Option<u64> {
        self.final_granule?.checked_sub(u64::from(self.pre_skip))
    }
}

/// Reads a whole Ogg Opus stream: validates OpusHead (alone on the first page, version 0.x,
/// 1+ channels; family 0 only with 1 or 2) and OpusTags (on its own page(s), well-formed
/// length fields), both with granule position 0, then returns every audio packet of that
/// logical stream with its TOC duration.
///
/// Pages of other logical streams are skipped; reading stops at the stream's end-of-stream page
/// (chained streams after it are ignored). Input that ends inside a page after the headers is
/// reported as `truncated` instead of as an error (what a crash leaves behind). Never panics on any input; it allocates in
/// proportion to the input's size.
pub fn read_ogg_opus<R: Read + Seek>(r: R) -> Result<OggOpusInfo, OggError> {
    let mut reader = PacketReader::new(r);
    let head = reader
        .read_packet()?
        .ok_or(OggError::InvalidHeader("no Ogg packet"))?;
    if !head.first_in_stream() || !head.last_in_page() {
        return Err(OggError::InvalidHeader(
            "OpusHead must be alone on the first page",
        ));
    }
    if head.absgp_page() != 0 {
        return Err(OggError::InvalidHeader("header page granule must be 0"));
    }
    let OpusHead { channels, pre_skip } =
        OpusHead::parse(&head.data).map_err(OggError::InvalidHeader)?;
    let serial = head.stream_serial();

    let tags = loop {
        match reader.read_packet()? {
            Some(p) if p.stream_serial() == serial => break p,
            Some(_) => continue,
            None => return Err(OggError::InvalidHeader("missing OpusTags")),
        }
    };
    if !tags.first_in_page() || !tags.last_in_page() {
        return Err(OggError::InvalidHeader("OpusTags must be on its own page"));
    }
    if tags.absgp_page() != 0 {
        return Err(OggError::InvalidHeader("header page granule must be 0"));
    }
    parse_opus_tags(&tags.data)?;

    let mut info = OggOpusInfo {
        channels,
        pre_skip,
        serial,
        packets: Vec::new(),
        final_granule: None,
        eos: tags.last_in_stream(),
        truncated: false,
    };
    // End of the last page a packet came from: the reader reads a page only when it has
    // handed out all packets of the previous one, so its position is that page's end.
    let mut consumed = reader.get_mut().stream_position()?;
    while !info.eos {
        let packet = match reader.read_packet() {
            Ok(Some(p)) => p,
            Ok(None) => {
                // Bytes after the last complete page: a page cut short (or trailing junk).
                info.truncated = reader.get_mut().seek(io::SeekFrom::End(0))? > consumed;
                break;
            }
            Err(OggReadError::ReadError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                info.truncated = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        consumed = reader.get_mut().stream_position()?;
        if packet.stream_serial() != serial {
            continue;
        }
        let index = info.packets.len() as u64;
        let samples = opus_packet_samples(&packet.data).ok_or(OggError::InvalidPacket { index })?;
        let granule = (packet.last_in_page() && packet.absgp_page() != u64::MAX)
            .then_some(packet.absgp_page());
        if granule.is_some() {
            info.final_granule = granule;
        }
        info.eos = packet.last_in_stream();
        info.packets.push(OggOpusPacket {
            data: packet.data,
            granule,
            samples,
        });
    }
    Ok(info)
}

/// Validates an OpusTags packet (RFC 7845 §5.2): magic, vendor string and comment list whose
/// length fields all stay inside the packet.
fn parse_opus_tags(p: &[u8]) -> Result<(), OggError> {
    const BAD: OggError = OggError::InvalidHeader("malformed OpusTags");
    let Some(mut rest) = p.strip_prefix(b"OpusTags") else {
        return Err(OggError::InvalidHeader("second packet is not OpusTags"));
    };
    let take_u32 = |rest: &mut &[u8]| -> Result<usize, OggError> {
        let (n, tail) = rest.split_first_chunk::<4>().ok_or(BAD)?;
        *rest = tail;
        usize::try_from(u32::from_le_bytes(*n)).map_err(|_| BAD)
    };
    let vendor_len = take_u32(&mut rest)?;
    rest = rest.get(vendor_len..).ok_or(BAD)?;
    let count = take_u32(&mut rest)?;
    for _ in 0..count {
        let len = take_u32(&mut rest)?;
        rest = rest.get(len..).ok_or(BAD)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::opus::MAX_PACKET_SAMPLES;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const PRE_SKIP: u16 = 312;

    /// Small deterministic PRNG (xorshift64*), so the tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// One Ogg page as laid out in the file.
    struct RawPage {
        flags: u8,
        granule: u64,
        serial: u32,
        seq: u32,
        lacing: Vec<u8>,
        body: Vec<u8>,
    }

    impl RawPage {
        fn completed_packets(&self) -> usize {
            self.lacing.iter().filter(|&&l| l < 255).count()
        }
    }

    fn raw_pages(bytes: &[u8]) -> Vec<RawPage> {
        let mut pages = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let h = &bytes[at..];
            assert_eq!(&h[..4], b"OggS", "page at byte {at}");
            assert_eq!(h[4], 0, "stream structure version");
            let nseg = usize::from(h[26]);
            let lacing = h[27..27 + nseg].to_vec();
            let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let start = 27 + nseg;
            pages.push(RawPage {
                flags: h[5],
                granule: u64::from_le_bytes(h[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(h[14..18].try_into().unwrap()),
                seq: u32::from_le_bytes(h[18..22].try_into().unwrap()),
                body: h[start..start + body_len].to_vec(),
                lacing,
            });
            at += start + body_len;
        }
        pages
    }

    /// Splits pages into packets: (packet, index of the page it ends on).
    fn raw_packets(pages: &[RawPage]) -> Vec<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            let mut off = 0;
            for &l in &page.lacing {
                cur.extend_from_slice(&page.body[off..off + usize::from(l)]);
                off += usize::from(l);
                if l < 255 {
                    out.push((std::mem::take(&mut cur), i));
                }
            }
        }
        assert!(cur.is_empty(), "stream ends inside a packet");
        out
    }

    /// Checks everything RFC 7845 and the writer's invariants say about page layout, that
    /// OpusHead carries `pre_skip`, and that each page's granule = samples of the packets
    /// completed so far, pre-skip included (RFC 7845 §4; up to `trimmed` samples fewer on the
    /// last page). Returns the audio packets.
    fn check_pages(
        bytes: &[u8],
        serial: u32,
        pre_skip: u16,
        eos: bool,
        trimmed: u64,
    ) -> Vec<Vec<u8>> {
        let pages = raw_pages(bytes);
        assert!(pages.len() >= 2);
        let packets = raw_packets(&pages);
        assert_eq!(packets[0].1, 0, "OpusHead alone on page 0");
        assert_eq!(pages[0].completed_packets(), 1);
        assert!(
            packets[1].1 == 1 && pages[1].completed_packets() == 1,
            "OpusTags alone on page 1"
        );
        assert_eq!(
            packets[0].0[10..12],
            pre_skip.to_le_bytes(),
            "OpusHead pre-skip"
        );
        // No starting offset: the granule counts every decoded sample from the first packet.
        let mut cumulative = 0u64;
        let mut next_packet = 2;
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(page.serial, serial);
            assert_eq!(page.seq, i as u32);
            assert_eq!(page.flags & 0x02 != 0, i == 0, "BOS only on the first page");
            let last = i + 1 == pages.len();
            assert_eq!(
                page.flags & 0x04 != 0,
                eos && last,
                "EOS only on the last page"
            );
            assert!(page.lacing.len() <= 255);
            if i < 2 {
                assert_eq!(page.granule, 0, "header pages have granule 0");
                continue;
            }
            assert!(page.completed_packets() <= MAX_PAGE_PACKETS as usize);
            let mut page_samples = 0u64;
            while next_packet < packets.len() && packets[next_packet].1 == i {
                let s = u64::from(opus_packet_samples(&packets[next_packet].0).unwrap());
                cumulative += s;
                page_samples += s;
                next_packet += 1;
            }
            assert!(page_samples < MAX_PAGE_SAMPLES + u64::from(MAX_PACKET_SAMPLES));
            if page.completed_packets() == 0 {
                assert_eq!(page.granule, u64::MAX, "page {i} completes no packet");
            } else if last && eos {
                assert!(page.granule <= cumulative && cumulative - page.granule == trimmed);
            } else {
                assert_eq!(page.granule, cumulative, "granule of page {i}");
            }
        }
        packets[2..].iter().map(|(p, _)| p.clone()).collect()
    }

    /// Reads the whole file with the ogg crate (which checks every page CRC) and returns
    /// (granule of each page that completes a packet, whether the last packet has EOS).
    fn ogg_crate_granules(bytes: &[u8]) -> (Vec<u64>, bool) {
        let mut r = PacketReader::new(Cursor::new(bytes));
        let mut granules = Vec::new();
        let mut eos = false;
        while let Some(p) = r.read_packet().unwrap() {
            if p.last_in_page() {
                granules.push(p.absgp_page());
            }
            eos = p.last_in_stream();
        }
        (granules, eos)
    }

    /// Sender side of the timeline tests: a 440 Hz tone encoded in 20 ms packets.
    struct ToneSender {
        enc: opus::Encoder,
        channels: usize,
    }

    impl ToneSender {
        fn new(channels: u8, app: opus::Application) -> Self {
            let ch = if channels == 2 {
                opus::Channels::Stereo
            } else {
                opus::Channels::Mono
            };
            Self {
                enc: opus::Encoder::new(48_000, ch, app).unwrap(),
                channels: usize::from(channels),
            }
        }
        /// Encodes 20 ms of silence and discards the packet (what DTX does not send).
        fn silence(&mut self) {
            self.enc
                .encode_vec(&vec![0i16; 960 * self.channels], 4000)
                .unwrap();
        }
        /// The packet for the 20 ms starting at absolute sample `start`.
        fn packet(&mut self, start: u64) -> Vec<u8> {
            let mut pcm = Vec::with_capacity(960 * self.channels);
            for i in 0..960u64 {
                let t = (start + i) as f64 / 48_000.0;
                let v = ((t * 440.0 * std::f64::consts::TAU).sin() * 12_000.0) as i16;
                pcm.extend(std::iter::repeat_n(v, self.channels));
            }
            self.enc.encode_vec(&pcm, 4000).unwrap()
        }
    }

    /// Extends 32-bit RTP timestamps to 64 bits with wrapping arithmetic.
    struct Unwrapper {
        last: Option<(u32, i64)>,
    }
    impl Unwrapper {
        fn extend(&mut self, ts: u32) -> i64 {
            let ext = match self.last {
                None => i64::from(ts),
                Some((prev, prev_ext)) => prev_ext + i64::from(ts.wrapping_sub(prev) as i32),
            };
            self.last = Some((ts, ext));
            ext
        }
    }

    /// Decodes every packet with libopus; returns interleaved samples (index i ↔ pts i).
    fn decode_all(info: &OggOpusInfo) -> Vec<i16> {
        let ch = if info.channels == 2 {
            opus::Channels::Stereo
        } else {
            opus::Channels::Mono
        };
        let n = usize::from(info.channels);
        let mut dec = opus::Decoder::new(48_000, ch).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0i16; 5760 * n];
        for p in &info.packets {
            let got = dec.decode(&p.data, &mut buf, false).unwrap();
            assert_eq!(got, p.samples as usize);
            out.extend_from_slice(&buf[..got * n]);
        }
        out
    }

    /// RMS of channel `c` over samples [from, to).
    fn rms(pcm: &[i16], channels: usize, c: usize, from: usize, to: usize) -> f64 {
        let sum: f64 = (from..to)
            .map(|i| f64::from(pcm[i * channels + c]).powi(2))
            .sum();
        (sum / (to - from) as f64).sqrt()
    }

    /// Tone for 1 s, silence sent as nothing for 2 s (DTX), tone for 1 s, with RTP timestamps
    /// that wrap.
    /// Returns the file bytes and the expected duration.
    fn write_tone_gap_tone(
        channels: u8,
        app: opus::Application,
        flush_copy: Option<&Path>,
    ) -> (Vec<u8>, u64) {
        let mut sender = ToneSender::new(channels, app);
        let mut w = OggOpusWriter::new(Vec::new(), 0x5EED, channels, PRE_SKIP).unwrap();
        let mut unwrap = Unwrapper { last: None };
        let ts0: u32 = 0xFFFF_F000;
        let mut first = None;
        for k in (0..50u64).chain(150..200) {
            let ts = ts0.wrapping_add((k * 960) as u32);
            let ext = unwrap.extend(ts);
            let pts = (ext - *first.get_or_insert(ext)) as u64;
            if k == 150 {
                // DTX: the sender's encoder codes the silent 2 s but sends nothing.
                for _ in 50..150 {
                    sender.silence();
                }
            }
            let out = w.write_packet(&sender.packet(k * 960), pts).unwrap();
            let expected_fill = if k == 150 { 96_000 } else { 0 };
            assert_eq!(
                out,
                PacketOutcome::Written {
                    filled_samples: expected_fill
                }
            );
            if k == 170 {
                if let Some(path) = flush_copy {
                    w.flush().unwrap();
                    std::fs::write(path, w.pages.inner().inner.as_slice()).unwrap();
                }
            }
        }
        assert_eq!(w.duration_samples(), 200 * 960 - u64::from(PRE_SKIP));
        assert_eq!(w.filled_samples(), 96_000);
        assert_eq!(w.packets_written(), 100);
        let dur = w.duration_samples();
        (w.finalize(None).unwrap(), dur)
    }

    fn check_tone_gap_tone(channels: u8, app: opus::Application) {
        let (bytes, duration) = write_tone_gap_tone(channels, app, None);
        check_pages(&bytes, 0x5EED, PRE_SKIP, true, 0);
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(info.duration_samples(), Some(duration));
        assert_eq!(
            duration + u64::from(PRE_SKIP),
            4 * 48_000,
            "the file's decoded samples span the whole 4 s"
        );
        let pcm = decode_all(&info);
        let n = usize::from(channels);
        assert_eq!(pcm.len(), 4 * 48_000 * n);
        for c in 0..n {
            let tone = rms(&pcm, n, c, 4_800, 43_200);
            assert!(tone > 5_000.0, "tone before the gap: rms {tone}");
            // The first 40 ms after the last tone packet hold decoder delay and the overlap
            // fade; after that the gap is digital silence.
            let gap_start = 48_000 + 1_920;
            let gap = rms(&pcm, n, c, gap_start, 144_000);
            let peak = (gap_start..144_000)
                .map(|i| pcm[i * n + c].unsigned_abs())
                .max();
            assert_eq!(peak, Some(0), "gap must be silent (rms {gap})");
            // Onset of the second tone: first 2.5 ms window with half the tone's energy.
            let onset = (144_000 - 960..192_000 - 120)
                .step_by(120)
                .find(|&i| rms(&pcm, n, c, i, i + 120) > tone / 2.0)
                .unwrap();
            assert!(
                onset.abs_diff(144_000) <= 960,
                "tone resumes at {onset}, expected 144000"
            );
            let after = rms(&pcm, n, c, 148_800, 187_200);
            assert!(after > 5_000.0, "tone after the gap: rms {after}");
        }
    }

    #[test]
    fn timeline_keeps_a_gap_as_silence_mono() {
        check_tone_gap_tone(1, opus::Application::Voip);
    }

    #[test]
    fn timeline_keeps_a_gap_as_silence_stereo() {
        check_tone_gap_tone(2, opus::Application::Audio);
    }

    #[test]
    fn opus_head_and_tags_field_by_field() {
        let bytes = OggOpusWriter::new(Vec::new(), 0xDEAD_BEEF, 2, 3840)
            .unwrap()
            .finalize(None)
            .unwrap();
        let pages = raw_pages(&bytes);
        let head = &pages[0].body;
        assert_eq!(pages[0].lacing, [19]);
        assert_eq!(&head[0..8], b"OpusHead");
        assert_eq!(head[8], 1, "version");
        assert_eq!(head[9], 2, "channels");
        assert_eq!(u16::from_le_bytes([head[10], head[11]]), 3840, "pre-skip");
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 48_000);
        assert_eq!(i16::from_le_bytes([head[16], head[17]]), 0, "output gain");
        assert_eq!(head[18], 0, "mapping family");
        assert_eq!(pages[0].flags, 0x02);
        assert_eq!(pages[0].granule, 0);
        assert_eq!(pages[0].serial, 0xDEAD_BEEF);

        let tags = &pages[1].body;
        assert_eq!(pages[1].flags, 0);
        assert_eq!(pages[1].granule, 0);
        assert_eq!(&tags[0..8], b"OpusTags");
        assert_eq!(u32::from_le_bytes(tags[8..12].try_into().unwrap()), 6);
        assert_eq!(&tags[12..18], b"recbot");
        assert_eq!(u32::from_le_bytes(tags[18..22].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(tags[22..26].try_into().unwrap()), 14);
        assert_eq!(&tags[26..40], b"ENCODER=recbot");
        assert_eq!(tags.len(), 40);

        // No audio at all: one EOS page, silence up to pre-skip (4 × 20 ms stereo), so the
        // final granule equals pre-skip and the playback length is 0.
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[2].flags, 0x04);
        assert_eq!(pages[2].granule, 3840);
        assert_eq!(pages[2].body, [0xFC, 0xFF, 0xFE].repeat(4));
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(
            (info.channels, info.pre_skip, info.serial),
            (2, 3840, 0xDEAD_BEEF)
        );
        assert!(info.eos && !info.truncated);
        assert_eq!(info.duration_samples(), Some(0));

        // Without pre-skip: a single 2.5 ms packet.
        let bytes = OggOpusWriter::new(Vec::new(), 1, 1, 0)
            .unwrap()
            .finalize(None)
            .unwrap();
        let pages = raw_pages(&bytes);
        assert_eq!(pages.len(), 3);
        assert_eq!((pages[2].flags, pages[2].granule), (0x04, 120));
        assert_eq!(pages[2].body, [0xE0, 0xFF, 0xFE]);
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(info.duration_samples(), Some(120));
    }

    #[test]
    fn writer_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<OggOpusWriter<std::fs::File>>();
        assert_send::<OggError>();
    }

    #[test]
    fn rejects_unsupported_channel_counts() {
        for ch in [0u8, 3, 8, 255] {
            assert!(matches!(
                OggOpusWriter::new(Vec::new(), 1, ch, 0),
                Err(OggError::UnsupportedChannels(c)) if c == ch
            ));
        }
    }

    /// A 1-byte packet (TOC only, code 0) with the given configuration: valid, any duration.
    fn toc_only(config: u8) -> [u8; 1] {
        [config << 3]
    }

    #[test]
    fn page_granules_follow_cumulative_samples() {
        let mut rng = Rng(7);
        let mut w = OggOpusWriter::new(Vec::new(), 42, 1, PRE_SKIP).unwrap();
        let mut pts = 0u64;
        for i in 0..3_000 {
            let config = rng.below(32) as u8;
            let packet = toc_only(config);
            let samples = u64::from(opus_packet_samples(&packet).unwrap());
            // Now and then a gap (a multiple of 2.5 ms, so nothing is absorbed).
            if rng.below(20) == 0 {
                pts += 120 * rng.below(400) as u64;
            }
            assert!(matches!(
                w.write_packet(&packet, pts).unwrap(),
                PacketOutcome::Written { .. }
            ));
            pts += samples;
            assert_eq!(
                w.duration_samples(),
                pts.saturating_sub(u64::from(PRE_SKIP))
            );
            if i % 700 == 0 {
                w.flush().unwrap();
                assert_eq!(w.bytes_written(), w.pages.inner().inner.len() as u64);
            }
        }
        let bytes = w.finalize(None).unwrap();
        let audio = check_pages(&bytes, 42, PRE_SKIP, true, 0);
        let total: u64 = audio
            .iter()
            .map(|p| u64::from(opus_packet_samples(p).unwrap()))
            .sum();
        assert_eq!(total, pts);
        let (granules, eos) = ogg_crate_granules(&bytes);
        assert!(eos);
        assert_eq!(granules.last(), Some(&pts));
        assert!(granules.windows(2).all(|g| g[0] <= g[1]));
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(info.duration_samples(), Some(pts - u64::from(PRE_SKIP)));
        assert_eq!(info.final_granule, Some(pts));
    }

    #[test]
    fn gap_remainder_under_2_5_ms_is_absorbed() {
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 1, 1, 0).unwrap();
        assert_eq!(
            w.write_packet(&p, 0).unwrap(),
            PacketOutcome::Written { filled_samples: 0 }
        );
        // 2 s + 5 ms + 50 samples later: 2 s + 5 ms of fill, the packet moves 50 samples early.
        let pts = 960 + 96_000 + 240 + 50;
        assert_eq!(
            w.write_packet(&p, pts).unwrap(),
            PacketOutcome::Written {
                filled_samples: 96_240
            }
        );
        assert_eq!(w.duration_samples(), pts + 960 - 50);
        // The next packet on the sender's timeline follows on: the shift does not grow.
        assert_eq!(
            w.write_packet(&p, pts + 960).unwrap(),
            PacketOutcome::Written { filled_samples: 0 }
        );
        assert_eq!(w.duration_samples(), pts + 1_920 - 50);
        // A later gap is measured against the caller's pts again.
        let pts2 = pts + 1_920 + 960;
        assert_eq!(
            w.write_packet(&p, pts2).unwrap(),
            PacketOutcome::Written {
                filled_samples: 960
            }
        );
        assert_eq!(w.duration_samples(), pts2 + 960 - 50);
        assert_eq!(w.filled_samples(), 96_240 + 960);
        let bytes = w.finalize(None).unwrap();
        check_pages(&bytes, 1, 0, true, 0);
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped() {
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 1, 1, 0).unwrap();
        for pts in [0, 960, 1_920] {
            assert!(matches!(
                w.write_packet(&p, pts).unwrap(),
                PacketOutcome::Written { .. }
            ));
        }
        for pts in [1_920, 960, 0, 2_879] {
            assert_eq!(
                w.write_packet(&p, pts).unwrap(),
                PacketOutcome::Dropped(DropReason::Late)
            );
        }
        assert_eq!(w.packets_written(), 3);
        assert_eq!(w.duration_samples(), 2_880);
        assert!(matches!(
            w.write_packet(&p, 2_880).unwrap(),
            PacketOutcome::Written { .. }
        ));
        let too_far = 3_840 + MAX_FILL_SAMPLES + 1;
        assert_eq!(
            w.write_packet(&p, too_far).unwrap(),
            PacketOutcome::Dropped(DropReason::TooFarAhead)
        );
        assert_eq!(
            w.write_packet(&p, u64::MAX).unwrap(),
            PacketOutcome::Dropped(DropReason::TooFarAhead)
        );
        let bytes = w.finalize(None).unwrap();
        let audio = check_pages(&bytes, 1, 0, true, 0);
        assert_eq!(audio.len(), 4);
    }

    #[test]
    fn invalid_packets_are_dropped_without_touching_the_stream() {
        let mut huge_frame = vec![0xF8];
        huge_frame.resize(1 + 1276, 0);
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xFB],                            // code 3 without a frame count byte
            vec![0xFB, 0x00],                      // code 3 with 0 frames
            vec![0xFB, 0x07, 1, 2, 3, 4, 5, 6, 7], // 7 × 20 ms = 140 ms > 120 ms
            vec![0x1B, 0x03, 0, 0, 0],             // 3 × 60 ms SILK
            vec![0xFB, 0x82, 10, 1, 2],            // VBR: first frame longer than the data
            vec![0xFB, 0x42, 200, 1, 2],           // padding longer than the packet
            vec![0xFB, 0x03, 1, 2],                // CBR: 3 frames of 2/3 bytes
            vec![0xF9, 1],                         // code 1 with an odd payload
            vec![0xFA],                            // code 2 without a length
            vec![0xFA, 252],                       // code 2 with a truncated 2-byte length
            vec![0xFA, 5, 1, 2],                   // code 2: first frame longer than the packet
            huge_frame,                            // code 0 frame > 1275 bytes
        ];
        let mut w = OggOpusWriter::new(Vec::new(), 1, 1, 0).unwrap();
        let before = w.bytes_written();
        for b in &bad {
            assert_eq!(opus_packet_samples(b), None, "{b:02x?}");
            assert!(opus::packet::parse(b).is_err(), "libopus agrees: {b:02x?}");
            assert_eq!(
                w.write_packet(b, 0).unwrap(),
                PacketOutcome::Dropped(DropReason::Invalid)
            );
        }
        assert_eq!(w.bytes_written(), before);
        assert_eq!((w.duration_samples(), w.packets_written()), (0, 0));
        let mut rng = Rng(99);
        for _ in 0..20_000 {
            let len = rng.below(40);
            let b = rng.bytes(len);
            if let PacketOutcome::Written { .. } = w.write_packet(&b, w.duration_samples()).unwrap()
            {
                assert!(opus_packet_samples(&b).is_some());
            }
        }
        let bytes = w.finalize(None).unwrap();
        check_pages(&bytes, 1, 0, true, 0);
        read_ogg_opus(Cursor::new(&bytes)).unwrap();
    }

    #[test]
    fn packet_parser_agrees_with_libopus() {
        let mut rng = Rng(1234);
        let mut valid = 0;
        for i in 0..200_000 {
            let len = match i % 4 {
                0 => rng.below(8),
                1 => rng.below(64),
                2 => rng.below(1_400),
                _ => 1_270 + rng.below(1_300),
            };
            let mut p = rng.bytes(len);
            // Bias towards structured packets: short lengths and small frame counts.
            if len >= 2 && rng.below(2) == 0 {
                p[1] &= 0xC3;
            }
            let mine = opus_packet_samples(&p);
            let libopus = opus::packet::parse(&p)
                .ok()
                .map(|_| opus::packet::get_nb_samples(&p, 48_000).unwrap() as u32);
            assert_eq!(mine, libopus, "packet {p:02x?}");
            valid += usize::from(mine.is_some());
        }
        assert!(valid > 10_000, "only {valid} valid packets generated");
    }

    #[test]
    fn silence_packets_are_what_libopus_encodes_and_decode_to_zeros() {
        for (ci, ch) in [opus::Channels::Mono, opus::Channels::Stereo]
            .into_iter()
            .enumerate()
        {
            let n = ci + 1;
            for (samples, packets) in &SILENCE_PACKETS {
                let frame = *samples as usize;
                let mut enc = opus::Encoder::new(48_000, ch, opus::Application::LowDelay).unwrap();
                let encoded = enc.encode_vec(&vec![0i16; frame * n], 100).unwrap();
                assert_eq!(encoded, packets[ci], "{frame} samples, {n} channel(s)");
                assert_eq!(opus_packet_samples(&packets[ci]), Some(*samples as u32));
                assert_eq!(opus::packet::get_nb_channels(&packets[ci]).unwrap(), ch);
                let mut dec = opus::Decoder::new(48_000, ch).unwrap();
                let mut out = vec![1i16; 5760 * n];
                assert_eq!(dec.decode(&packets[ci], &mut out, false).unwrap(), frame);
                assert!(out[..frame * n].iter().all(|&s| s == 0));
            }
        }
    }

    #[test]
    fn finalize_extends_to_end_pts_exactly_with_end_trimming() {
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 9, 1, PRE_SKIP).unwrap();
        w.write_packet(&p, 0).unwrap();
        // 1 s + 1000 samples = 50 × 960 + 8 × 120 + 40.
        let end_pts = 960 + 48_000 + 1_000;
        let bytes = w.finalize(Some(end_pts)).unwrap();
        let audio = check_pages(&bytes, 9, PRE_SKIP, true, 80);
        let total: u64 = audio
            .iter()
            .map(|p| u64::from(opus_packet_samples(p).unwrap()))
            .sum();
        assert_eq!(total, end_pts + 80);
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(info.final_granule, Some(end_pts));
        assert_eq!(info.duration_samples(), Some(end_pts - u64::from(PRE_SKIP)));

        // An end_pts at or before the end changes nothing.
        let mut w = OggOpusWriter::new(Vec::new(), 9, 1, 0).unwrap();
        w.write_packet(&p, 0).unwrap();
        let info = read_ogg_opus(Cursor::new(w.finalize(Some(10)).unwrap())).unwrap();
        assert_eq!(info.duration_samples(), Some(960));
        assert_eq!(info.packets.len(), 1);
    }

    #[test]
    fn finalize_right_after_flush_ends_with_a_trimmed_packet() {
        let p = [0xFC, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 3, 2, PRE_SKIP).unwrap();
        for k in 0..10 {
            w.write_packet(&p, k * 960).unwrap();
        }
        w.flush().unwrap();
        let flushed = w.pages.inner().inner.clone();
        assert_eq!(w.bytes_written(), flushed.len() as u64);
        let info = read_ogg_opus(Cursor::new(&flushed)).unwrap();
        assert!(!info.eos && !info.truncated);
        assert_eq!(info.final_granule, Some(9_600));
        assert_eq!(info.duration_samples(), Some(9_600 - u64::from(PRE_SKIP)));
        w.flush().unwrap(); // nothing held: a no-op
        assert_eq!(w.pages.inner().inner, flushed);
        let bytes = w.finalize(None).unwrap();
        assert!(bytes.starts_with(&flushed));
        check_pages(&bytes, 3, PRE_SKIP, true, 120);
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert!(info.eos);
        assert_eq!(info.final_granule, Some(9_600));
        assert_eq!(info.duration_samples(), Some(9_600 - u64::from(PRE_SKIP)));
    }

    /// A valid Opus packet larger than an Ogg page: one 20 ms CELT silence frame plus padding.
    fn padded_packet(padding: usize) -> Vec<u8> {
        let mut p = vec![0xFB, 0x41];
        p.extend(std::iter::repeat_n(255u8, padding / 254));
        p.push((padding % 254) as u8);
        p.extend_from_slice(&[0xFF, 0xFE]);
        p.resize(p.len() + padding, 0);
        p
    }

    #[test]
    fn packets_larger_than_a_page_span_pages() {
        let big = padded_packet(100_000);
        assert_eq!(opus_packet_samples(&big), Some(960));
        assert!(opus::packet::parse(&big).is_ok());
        let small = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 5, 1, 0).unwrap();
        let mut sent = Vec::new();
        for k in 0..120u64 {
            let p: &[u8] = if k % 37 == 5 { &big } else { &small };
            w.write_packet(p, k * 960).unwrap();
            sent.push(p.to_vec());
        }
        let bytes = w.finalize(None).unwrap();
        let audio = check_pages(&bytes, 5, 0, true, 0);
        assert_eq!(audio, sent);
        let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        assert_eq!(
            info.packets
                .iter()
                .map(|p| p.data.clone())
                .collect::<Vec<_>>(),
            sent
        );
        assert_eq!(info.duration_samples(), Some(120 * 960));
    }

    #[test]
    fn counters_and_bytes_written() {
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 5, 1, 0).unwrap();
        let header_bytes = w.bytes_written();
        assert_eq!(header_bytes, w.pages.inner().inner.len() as u64);
        assert!(header_bytes > 0);
        w.write_packet(&p, 1_920).unwrap();
        assert_eq!(w.filled_samples(), 1_920);
        assert_eq!(w.packets_written(), 1);
        assert_eq!(w.duration_samples(), 2_880);
        let bytes = w.finalize(None).unwrap();
        assert_eq!(raw_packets(&raw_pages(&bytes)).len(), 2 + 3);

        // duration_samples() excludes pre-skip and stays 0 until the stream is past it.
        let mut w = OggOpusWriter::new(Vec::new(), 5, 1, 3_840).unwrap();
        for (k, expect) in [(0, 0), (1, 0), (2, 0), (3, 0), (4, 960), (5, 1_920)] {
            w.write_packet(&p, k * 960).unwrap();
            assert_eq!(w.duration_samples(), expect, "after packet {k}");
        }
        let info = read_ogg_opus(Cursor::new(w.finalize(None).unwrap())).unwrap();
        assert_eq!(info.final_granule, Some(5_760));
        assert_eq!(info.duration_samples(), Some(1_920));
    }

    /// Accepts `budget` bytes, then fails.
    struct FailingWriter {
        budget: usize,
    }
    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_errors_are_reported_and_poison_the_writer() {
        assert!(matches!(
            OggOpusWriter::new(FailingWriter { budget: 10 }, 1, 1, 0),
            Err(OggError::Io(_))
        ));
        let mut w = OggOpusWriter::new(FailingWriter { budget: 200 }, 1, 1, 0).unwrap();
        let p = [0xF8, 0xFF, 0xFE];
        let mut failed = false;
        for k in 0..200 {
            match w.write_packet(&p, k * 960) {
                Ok(_) => {}
                Err(OggError::Io(_)) => {
                    failed = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(failed);
        assert!(matches!(
            w.write_packet(&p, 1_000_000),
            Err(OggError::Broken)
        ));
        assert!(matches!(w.flush(), Err(OggError::Broken)));
        assert!(matches!(w.finalize(None), Err(OggError::Broken)));
    }

    /// Keeps only the last bytes written (enough for the last pages) and counts the rest.
    struct TailWriter {
        total: u64,
        tail: Vec<u8>,
    }
    impl Write for TailWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.total += buf.len() as u64;
            self.tail.extend_from_slice(buf);
            if self.tail.len() > 64 * 1024 {
                self.tail.drain(..self.tail.len() - 8 * 1024);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// (flags, granule) of the last page in `tail`.
    fn last_page(tail: &[u8]) -> (u8, u64) {
        let at = tail.windows(4).rposition(|w| w == b"OggS").unwrap();
        let h = &tail[at..];
        (h[5], u64::from_le_bytes(h[6..14].try_into().unwrap()))
    }

    #[test]
    fn three_hour_stream_has_the_right_final_granule() {
        const THREE_HOURS: u64 = 3 * 3_600 * 48_000;
        let p = [0xF8, 0xFF, 0xFE];
        // One real packet repeated every 20 ms.
        let mut w = OggOpusWriter::new(Vec::new(), 77, 1, PRE_SKIP).unwrap();
        let mut pts = 0;
        while pts < THREE_HOURS {
            assert!(matches!(
                w.write_packet(&p, pts).unwrap(),
                PacketOutcome::Written { filled_samples: 0 }
            ));
            pts += 960;
        }
        assert_eq!(w.duration_samples(), THREE_HOURS - u64::from(PRE_SKIP));
        let bytes = w.finalize(None).unwrap();
        let pages = raw_pages(&bytes);
        let last = pages.last().unwrap();
        assert_eq!(last.flags, 0x04);
        assert_eq!(last.granule, THREE_HOURS);
        assert_eq!(pages.len(), 2 + (THREE_HOURS / 960 / 50) as usize);

        // Fill only: two packets 3 h apart.
        let mut w = OggOpusWriter::new(
            TailWriter {
                total: 0,
                tail: Vec::new(),
            },
            77,
            1,
            PRE_SKIP,
        )
        .unwrap();
        w.write_packet(&p, 0).unwrap();
        w.write_packet(&p, THREE_HOURS - 960).unwrap();
        assert_eq!(w.filled_samples(), THREE_HOURS - 1_920);
        let out = w.finalize(None).unwrap();
        assert_eq!(last_page(&out.tail), (0x04, THREE_HOURS));
    }

    #[test]
    fn granules_beyond_32_bits() {
        // 26 h in two fills of 13 h: the sample count passes 2^32.
        const HOURS_13: u64 = 13 * 3_600 * 48_000;
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(
            TailWriter {
                total: 0,
                tail: Vec::new(),
            },
            1,
            1,
            0,
        )
        .unwrap();
        w.write_packet(&p, HOURS_13).unwrap();
        w.write_packet(&p, 2 * HOURS_13).unwrap();
        let end = 2 * HOURS_13 + 960;
        assert!(end > u64::from(u32::MAX));
        assert_eq!(w.duration_samples(), end);
        let out = w.finalize(None).unwrap();
        assert_eq!(last_page(&out.tail), (0x04, end));
    }

    fn opus_head_with(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut h = opus_head(1, 0);
        f(&mut h);
        h
    }

    /// Builds a stream from raw packets: (bytes, end info, granule).
    fn stream(packets: Vec<(Vec<u8>, PacketWriteEndInfo, u64)>) -> Vec<u8> {
        let mut w = PacketWriter::new(Vec::new());
        for (p, info, g) in packets {
            w.write_packet(p, 11, info, g).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn reader_validates_headers() {
        use PacketWriteEndInfo::{EndPage, EndStream, NormalPacket};
        let audio = vec![0xF8, 0xFF, 0xFE];
        let good = |head: Vec<u8>, tags: Vec<u8>| {
            stream(vec![
                (head, EndPage, 0),
                (tags, EndPage, 0),
                (audio.clone(), EndStream, 960),
            ])
        };
        let info = read_ogg_opus(Cursor::new(good(opus_head(1, 0), opus_tags()))).unwrap();
        assert_eq!(info.packets.len(), 1);
        assert!(info.eos);

        let header =
            |r: Result<OggOpusInfo, OggError>| matches!(r, Err(OggError::InvalidHeader(_)));
        let bad_heads = [
            opus_head_with(|h| h[0] = b'X'),
            opus_head_with(|h| h[8] = 0x10),
            opus_head_with(|h| h[9] = 0),
            opus_head_with(|h| h[9] = 3),
            opus_head_with(|h| h.truncate(18)),
            opus_head_with(|h| h[18] = 1), // family 1 without a mapping table
            opus_head_with(|h| {
                h[18] = 1; // ... and with 0 streams
                h.extend_from_slice(&[0, 0, 0]);
            }),
        ];
        for h in bad_heads {
            assert!(
                header(read_ogg_opus(Cursor::new(good(h.clone(), opus_tags())))),
                "{h:02x?}"
            );
        }
        // Family 1 with a valid table is accepted.
        let fam1 = opus_head_with(|h| {
            h[18] = 1;
            h.extend_from_slice(&[1, 0, 0]);
        });
        assert!(read_ogg_opus(Cursor::new(good(fam1, opus_tags()))).is_ok());

        let mut tags = opus_tags();
        tags[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let bad_tags = [
            b"OpusTagz\0\0\0\0\0\0\0\0".to_vec(),
            tags,
            opus_tags()[..20].to_vec(),
            [opus_tags(), vec![0]].concat()[..opus_tags().len() - 1].to_vec(),
        ];
        for t in bad_tags {
            assert!(
                header(read_ogg_opus(Cursor::new(good(opus_head(1, 0), t.clone())))),
                "{t:02x?}"
            );
        }
        // Trailing bytes after the comments are allowed (RFC 7845 §5.2).
        assert!(read_ogg_opus(Cursor::new(good(
            opus_head(1, 0),
            [opus_tags(), vec![1]].concat()
        )))
        .is_ok());

        // Layout errors.
        let shared_page = stream(vec![
            (opus_head(1, 0), NormalPacket, 0),
            (opus_tags(), EndPage, 0),
            (audio.clone(), EndStream, 960),
        ]);
        assert!(header(read_ogg_opus(Cursor::new(shared_page))));
        let tags_with_audio = stream(vec![
            (opus_head(1, 0), EndPage, 0),
            (opus_tags(), NormalPacket, 0),
            (audio.clone(), EndStream, 960),
        ]);
        assert!(header(read_ogg_opus(Cursor::new(tags_with_audio))));
        let head_granule = stream(vec![
            (opus_head(1, 0), EndPage, 5),
            (opus_tags(), EndPage, 0),
        ]);
        assert!(header(read_ogg_opus(Cursor::new(head_granule))));
        let no_tags = stream(vec![(opus_head(1, 0), EndStream, 0)]);
        assert!(header(read_ogg_opus(Cursor::new(no_tags))));
        assert!(matches!(
            read_ogg_opus(Cursor::new(Vec::new())),
            Err(OggError::Framing(_))
        ));

        let bad_audio = stream(vec![
            (opus_head(1, 0), EndPage, 0),
            (opus_tags(), EndPage, 0),
            (audio.clone(), NormalPacket, 960),
            (vec![], EndStream, 960),
        ]);
        assert!(matches!(
            read_ogg_opus(Cursor::new(bad_audio)),
            Err(OggError::InvalidPacket { index: 1 })
        ));
    }

    #[test]
    fn reader_survives_truncation_and_garbage() {
        let (bytes, _) = write_tone_gap_tone(1, opus::Application::Voip, None);
        let full = read_ogg_opus(Cursor::new(&bytes)).unwrap();
        let header_len: usize = raw_pages(&bytes)[..2]
            .iter()
            .map(|p| 27 + p.lacing.len() + p.body.len())
            .sum();
        let page_ends: Vec<usize> = raw_pages(&bytes)
            .iter()
            .scan(0, |at, p| {
                *at += 27 + p.lacing.len() + p.body.len();
                Some(*at)
            })
            .collect();
        for n in 0..bytes.len() {
            match read_ogg_opus(Cursor::new(&bytes[..n])) {
                Ok(info) => {
                    assert!(n >= header_len, "headers incomplete at {n}");
                    assert!(!info.eos);
                    assert_eq!(info.truncated, !page_ends.contains(&n), "cut at {n}");
                    assert_eq!(info.packets[..], full.packets[..info.packets.len()]);
                }
                Err(_) => assert!(
                    n < header_len,
                    "cut at {n} after the headers must still read"
                ),
            }
        }
        let mut rng = Rng(5);
        for i in 0..3_000 {
            let junk_len = rng.below(3_000);
            let mut junk = rng.bytes(junk_len);
            if i % 2 == 0 {
                let at = rng.below(junk.len() + 1);
                junk.splice(at..at, b"OggS\0".iter().copied());
            }
            let _ = read_ogg_opus(Cursor::new(&junk));
            // Corrupt a valid file in a few places.
            let mut flipped = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(flipped.len());
                flipped[at] ^= 1 << rng.below(8);
            }
            let _ = read_ogg_opus(Cursor::new(&flipped));
        }
        // Garbage packets in pages with valid CRCs.
        for _ in 0..3_000 {
            let mut packets = vec![(
                opus_head(1 + rng.below(2) as u8, 0),
                PacketWriteEndInfo::EndPage,
                0,
            )];
            for _ in 0..rng.below(6) {
                let len = rng.below(600);
                let info = match rng.below(3) {
                    0 => PacketWriteEndInfo::NormalPacket,
                    1 => PacketWriteEndInfo::EndPage,
                    _ => PacketWriteEndInfo::EndStream,
                };
                packets.push((rng.bytes(len), info, rng.next() % 4));
            }
            if rng.below(2) == 0 {
                packets.insert(1, (opus_tags(), PacketWriteEndInfo::EndPage, 0));
            }
            let _ = read_ogg_opus(Cursor::new(stream(packets)));
        }
    }

    // ---- External decoders -------------------------------------------------------------

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("recbot-ogg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs ffmpeg and opusinfo on `path`, checks they report no error and that ffprobe's
    /// duration and ffmpeg's decoded sample counts (native and libopus decoders) match.
    fn check_with_tools(path: &Path, info: &OggOpusInfo) {
        let name = path.display();
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "ffmpeg -v error -i {name} -f null - → {:?} stderr={stderr:?}",
            out.status
        );
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "ffmpeg on {name}: {stderr}"
        );

        // Players decode everything and drop the pre-skip: final granule − pre-skip samples.
        let decoded_samples = info.duration_samples().unwrap();
        for decoder in ["opus", "libopus"] {
            let out = Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-c:a", decoder, "-i"])
                .arg(path)
                .args(["-f", "s16le", "-"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if decoder == "libopus" && stderr.contains("Unknown decoder") {
                eprintln!("ffmpeg has no libopus decoder; skipped that check");
                continue;
            }
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "{decoder}: {stderr}"
            );
            let got = (out.stdout.len() / 2 / usize::from(info.channels)) as u64;
            eprintln!("ffmpeg -c:a {decoder} decoded {got} samples/channel from {name}");
            assert_eq!(got, decoded_samples, "{decoder} samples of {name}");
        }

        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=start_time,duration",
                "-of",
                "csv=p=0",
            ])
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("ffprobe {name}: start_time,duration = {text}");
        let (start, duration) = text.split_once(',').unwrap();
        // No starting offset (RFC 7845 §4): ffprobe puts the start at 0 (or omits it).
        assert!(
            start.is_empty() || start == "N/A" || start.parse::<f64>().unwrap() == 0.0,
            "ffprobe start_time {text}"
        );
        // ffprobe (checked with ffmpeg 5.1) reports the duration as final granule / 48000, i.e.
        // the decoded samples including the pre-skip it later drops; it does the same for files
        // ffmpeg's own Ogg muxer writes. The playback length (final granule − pre-skip) is
        // checked through the decoded sample counts above and opusinfo below.
        let final_granule = info.final_granule.unwrap() as f64 / 48_000.0;
        assert!(
            (duration.parse::<f64>().unwrap() - final_granule).abs() < 0.001,
            "ffprobe duration {text}, expected {final_granule}"
        );

        let out = Command::new("opusinfo").arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!("opusinfo {name}:\n{text}");
        // opusinfo exits with 1 after any warning, including the expected missing-EOS one.
        assert!(
            out.status.success() || !info.eos,
            "opusinfo failed on {name}"
        );
        let complaints: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                let complaint = l.contains("warning") || l.contains("error");
                // An unfinalized file has no EOS page by construction.
                let missing_eos = !info.eos && l.contains("eos not set");
                complaint && !missing_eos
            })
            .collect();
        assert!(
            complaints.is_empty(),
            "opusinfo complaints on {name}: {complaints:?}"
        );
        // "Playback length: 0m:03.993s" (truncated to the millisecond).
        let length = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Playback length: "))
            .and_then(|l| l.strip_suffix('s'))
            .and_then(|l| l.split_once("m:"))
            .map(|(m, s)| m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap())
            .unwrap();
        let expect = decoded_samples as f64 / 48_000.0;
        assert!(
            (length - expect).abs() < 0.001_1,
            "opusinfo playback length {length}, expected {expect}"
        );
    }

    #[test]
    fn ffmpeg_ffprobe_and_opusinfo_accept_the_files() {
        if !crate::record::test_tools::tool_ok("ffmpeg", "-version")
            || !crate::record::test_tools::tool_ok("ffprobe", "-version")
            || !crate::record::test_tools::tool_ok("opusinfo", "-V")
        {
            return;
        }
        let dir = temp_dir("tools");
        for (channels, app) in [(1, opus::Application::Voip), (2, opus::Application::Audio)] {
            let cut = dir.join(format!("cut-{channels}.ogg"));
            let (bytes, _) = write_tone_gap_tone(channels, app, Some(&cut));
            let clean = dir.join(format!("clean-{channels}.ogg"));
            std::fs::write(&clean, &bytes).unwrap();
            for path in [&clean, &cut] {
                let info = read_ogg_opus(std::fs::File::open(path).unwrap()).unwrap();
                assert_eq!(info.eos, path == &clean);
                check_with_tools(path, &info);
            }
        }

        // Extension with end trimming, a finalize right after flush, and an empty stream.
        let p = [0xF8, 0xFF, 0xFE];
        let mut w = OggOpusWriter::new(Vec::new(), 1, 1, PRE_SKIP).unwrap();
        w.write_packet(&p, 0).unwrap();
        let trimmed = w.finalize(Some(48_000 + 1_000)).unwrap();
        let mut w = OggOpusWriter::new(Vec::new(), 1, 1, PRE_SKIP).unwrap();
        for k in 0..100 {
            w.write_packet(&p, k * 960).unwrap();
        }
        w.flush().unwrap();
        let after_flush = w.finalize(None).unwrap();
        let empty = OggOpusWriter::new(Vec::new(), 1, 1, PRE_SKIP)
            .unwrap()
            .finalize(None)
            .unwrap();
        let empty0 = OggOpusWriter::new(Vec::new(), 1, 1, 0)
            .unwrap()
            .finalize(None)
            .unwrap();
        let files = [
            ("trimmed", trimmed),
            ("after-flush", after_flush),
            ("empty", empty),
            ("empty-no-preskip", empty0),
        ];
        for (name, bytes) in files {
            let path = dir.join(format!("{name}.ogg"));
            std::fs::write(&path, &bytes).unwrap();
            let info = read_ogg_opus(Cursor::new(&bytes)).unwrap();
            if name.starts_with("empty") {
                // Nothing to decode: just no errors.
                let out = Command::new("ffmpeg")
                    .args(["-nostdin", "-v", "error", "-i"])
                    .arg(&path)
                    .args(["-f", "null", "-"])
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                eprintln!("ffmpeg on empty stream → {:?} {stderr:?}", out.status);
                assert!(out.status.success() && stderr.trim().is_empty());
                let out = Command::new("opusinfo").arg(&path).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                eprintln!("opusinfo {name}:\n{text}");
                let complaints: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("WARNING") || l.contains("buggy"))
                    // opusinfo warns about any pre-skip under 2.5 ms.
                    .filter(|l| !l.contains("Implausibly low preskip"))
                    .collect();
                assert!(complaints.is_empty(), "opusinfo on {name}: {complaints:?}");
            } else {
                check_with_tools(&path, &info);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
