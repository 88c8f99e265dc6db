//! The composite video of a finished recording: every video participant in a grid that
//! re-flows as people join and leave, names under the tiles, VP8 at 30 fps, muxed with the
//! room mix into `room.webm` (Cues, Duration).
//!
//! Time is the recording's clock: output frame `k` shows, for each video track live at
//! `k / 30` s (from its `start_offset_ms` for its `duration_ms`), the newest of its frames at or
//! before that time (so a gap in a sender's video holds its last frame). Tiles keep the
//! source's aspect ratio (letterboxed on black). The renderer only reads the source files.

use super::vpx::{Decoder, Encoder, EncoderConfig, I420};
use crate::record::manifest::{Kind, RecordingDoc};
use crate::record::ogg::read_ogg_opus;
use crate::record::webm::{WebmTrack, WebmWriter};
use crate::record::webm_reader::{read_webm, WebmTrackKind};
use std::io::BufWriter;
use std::path::Path;

/// Frames per second of the composite.
pub const FPS: u32 = 30;
/// Force a keyframe this often (frames): a Cue every 2 s, for seeking.
const KEYFRAME_EVERY: i64 = 2 * FPS as i64;
/// Colour of the background and letterboxes (black, video range).
const BLACK: (u8, u8, u8) = (16, 128, 128);
/// Luma of the names' text.
const TEXT_Y: u8 = 235;
/// Pixels between tiles.
const GAP: u32 = 4;

/// One video track to show: its participant's name, where it sits on the recording's clock
/// and its frames (time since the track's start, VP8 bytes).
#[derive(Debug, Clone)]
pub struct VideoSource {
    /// Display name under the tile.
    pub name: String,
    /// Recording time of the track's first frame (ms).
    pub start_ms: i64,
    /// Recording time the track ended (ms).
    pub end_ms: i64,
    /// Frames in order: time since `start_ms` and the VP8 frame.
    pub frames: Vec<(i64, Vec<u8>)>,
}

/// A rectangle of the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// The cells of a grid of `n` tiles on a `width × height` canvas: `ceil(sqrt(n))` columns,
/// as many rows as needed; a last row that is not full is centred. Cells are separated by
/// [`GAP`] pixels, and their corners are even (chroma-aligned).
pub fn grid(n: usize, width: u32, height: u32) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let even = |v: u32| v & !1;
    let cw = even(width.saturating_sub(GAP * (cols + 1)) / cols);
    let ch = even(height.saturating_sub(GAP * (rows + 1)) / rows);
    let top = even(height.saturating_sub(ch * rows + GAP * (rows - 1)) / 2);
    (0..n as u32)
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let in_row = if row == rows - 1 {
                n as u32 - row * cols
            } else {
                cols
            };
            let left = even(width.saturating_sub(cw * in_row + GAP * (in_row - 1)) / 2);
            Rect {
                x: left + col * (cw + GAP),
                y: top + row * (ch + GAP),
                w: cw,
                h: ch,
            }
        })
        .collect()
}

/// Where a `src_w × src_h` picture goes inside `cell` (aspect kept, centred, even corners),
/// leaving `label` pixels at the bottom for the name.
fn fit(cell: Rect, src_w: u32, src_h: u32, label: u32) -> Rect {
    let area_h = cell.h.saturating_sub(label);
    if src_w == 0 || src_h == 0 || area_h == 0 {
        return Rect { h: 0, ..cell };
    }
    let (w, h) = if u64::from(cell.w) * u64::from(src_h) <= u64::from(area_h) * u64::from(src_w) {
        (
            cell.w,
            (u64::from(cell.w) * u64::from(src_h) / u64::from(src_w)) as u32,
        )
    } else {
        (
            (u64::from(area_h) * u64::from(src_w) / u64::from(src_h)) as u32,
            area_h,
        )
    };
    let (w, h) = (w.max(2) & !1, h.max(2) & !1);
    Rect {
        x: (cell.x + (cell.w - w) / 2) & !1,
        y: (cell.y + (area_h - h) / 2) & !1,
        w,
        h,
    }
}

/// Fills `r` of `canvas` with a colour.
fn fill(canvas: &mut I420, r: Rect, (y, u, v): (u8, u8, u8)) {
    for (p, (plane, stride)) in canvas.planes_mut().into_iter().enumerate() {
        let (value, shift) = [(y, 0), (u, 1), (v, 1)][p];
        let (x0, y0) = ((r.x >> shift) as usize, (r.y >> shift) as usize);
        let (w, h) = ((r.w >> shift) as usize, (r.h >> shift) as usize);
        for row in y0..y0 + h {
            let at = row * stride + x0;
            if let Some(line) = plane.get_mut(at..at + w) {
                line.fill(value);
            }
        }
    }
}

/// Scales `src` into `r` of `canvas` (nearest neighbour, per plane).
fn blit(canvas: &mut I420, r: Rect, src: &I420) {
    let planes = src.planes();
    let (cw, ch) = src.chroma_size();
    let sizes = [
        (src.width as usize, src.height as usize),
        (cw, ch),
        (cw, ch),
    ];
    for (p, (plane, stride)) in canvas.planes_mut().into_iter().enumerate() {
        let shift = if p == 0 { 0 } else { 1 };
        let (x0, y0) = ((r.x >> shift) as usize, (r.y >> shift) as usize);
        let (w, h) = ((r.w >> shift) as usize, (r.h >> shift) as usize);
        let (sw, sh) = sizes[p];
        let (sp, sstride) = planes[p];
        if w == 0 || h == 0 || sw == 0 || sh == 0 {
            continue;
        }
        let xs: Vec<usize> = (0..w).map(|x| (x * sw / w).min(sw - 1)).collect();
        for row in 0..h {
            let sy = (row * sh / h).min(sh - 1);
            let src_line = &sp[sy * sstride..sy * sstride + sw];
            let at = (y0 + row) * stride + x0;
            let Some(line) = plane.get_mut(at..at + w) else {
                continue;
            };
            for (d, &sx) in line.iter_mut().zip(&xs) {
                *d = src_line[sx];
            }
        }
    }
}

/// Writes `text` (ASCII; other characters as `?`) centred on the line of height `8 × scale`
/// at the top of `r`, cut to fit.
fn label(canvas: &mut I420, r: Rect, text: &str, scale: u32) {
    let glyph = 8 * scale;
    let fits = (r.w / glyph) as usize;
    let chars: Vec<char> = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(fits)
        .collect();
    let width = chars.len() as u32 * glyph;
    let x0 = r.x + (r.w.saturating_sub(width)) / 2;
    let (luma, stride) = {
        let [(plane, stride), _, _] = canvas.planes_mut();
        (plane, stride)
    };
    for (i, c) in chars.into_iter().enumerate() {
        let bitmap = font8x8::legacy::BASIC_LEGACY[(c as usize) & 0x7f];
        for (gy, bits) in bitmap.iter().enumerate() {
            for gx in 0..8u32 {
                if bits & (1 << gx) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    let y = (r.y + gy as u32 * scale + dy) as usize;
                    let x = (x0 + i as u32 * glyph + gx * scale) as usize;
                    let at = y * stride + x;
                    if let Some(px) = luma.get_mut(at..at + scale as usize) {
                        px.fill(TEXT_Y);
                    }
                }
            }
        }
    }
}

/// A track being shown: its decoder and its newest picture.
struct Tile {
    source: VideoSource,
    decoder: Decoder,
    next: usize,
    picture: Option<I420>,
    /// The picture changed since it was last drawn.
    dirty: bool,
    errors: u64,
}

impl Tile {
    /// Decodes the frames up to recording time `t_ms`.
    fn advance(&mut self, t_ms: i64) {
        while let Some((ts, data)) = self.source.frames.get(self.next) {
            if self.source.start_ms + ts > t_ms {
                break;
            }
            self.next += 1;
            match self.decoder.decode(data) {
                Ok(pictures) => {
                    if let Some(p) = pictures.into_iter().last() {
                        self.picture = Some(p);
                        self.dirty = true;
                    }
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::debug!(name = %self.source.name, error = %e, "frame not decoded");
                }
            }
        }
    }

    fn live(&self, t_ms: i64) -> bool {
        self.source.start_ms <= t_ms && t_ms < self.source.end_ms
    }
}

/// What to render: the sources, the mix, the size and the length.
pub struct Job<'a> {
    /// The video tracks.
    pub sources: Vec<VideoSource>,
    /// The room mix (Ogg Opus), if any: its packets become the audio track.
    pub mix: Option<&'a Path>,
    /// Canvas size (even sides).
    pub size: (u32, u32),
    /// Length of the recording (ms): the composite's duration.
    pub duration_ms: u64,
}

/// Figures of a render.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendered {
    /// Video frames written.
    pub frames: u64,
    /// Source frames that did not decode.
    pub decode_errors: u64,
}

/// Renders `job` into `out` (created). `progress` gets the share done (0..1) now and then;
/// returning `false` from it cancels the render.
pub fn render(
    job: Job<'_>,
    out: &Path,
    mut progress: impl FnMut(f64) -> bool,
) -> Result<Rendered, String> {
    let (width, height) = job.size;
    let mut encoder = Encoder::new(EncoderConfig {
        width,
        height,
        fps: FPS,
        bitrate_kbps: (u64::from(width) * u64::from(height) * 15 / 10_000).clamp(200, 8000) as u32,
        threads: 1,
    })
    .map_err(|e| e.to_string())?;
    let audio = match job.mix {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let info = read_ogg_opus(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
            Some(info)
        }
        None => None,
    };
    let mut tracks = vec![WebmTrack::Video {
        number: 1,
        width,
        height,
    }];
    if let Some(info) = &audio {
        tracks.push(WebmTrack::Audio {
            number: 2,
            channels: info.channels,
            pre_skip: info.pre_skip,
        });
    }
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut writer = WebmWriter::new(BufWriter::with_capacity(256 * 1024, file), &tracks)
        .map_err(|e| e.to_string())?;
    // Audio packets with their times (ms since the stream's first decoded sample).
    let mut audio_packets = audio.into_iter().flat_map(|info| {
        let mut at = 0u64;
        info.packets.into_iter().map(move |p| {
            let ts = at / 48;
            at += u64::from(p.samples);
            (ts, p.data)
        })
    });
    let mut next_audio = audio_packets.next();

    let mut tiles: Vec<Tile> = Vec::new();
    for source in job.sources {
        tiles.push(Tile {
            source,
            decoder: Decoder::new().map_err(|e| e.to_string())?,
            next: 0,
            picture: None,
            dirty: false,
            errors: 0,
        });
    }
    let mut canvas = I420::filled(width, height, BLACK);
    let mut layout: Vec<usize> = Vec::new();
    let mut placed: Vec<(Rect, Option<(u32, u32)>)> = Vec::new();
    let frames = (job.duration_ms * u64::from(FPS)).div_ceil(1000).max(1);
    let mut rendered = Rendered::default();
    for k in 0..frames as i64 {
        let t_ms = k * 1000 / i64::from(FPS);
        let ts = (k * 1000 + i64::from(FPS) / 2) / i64::from(FPS);
        for tile in tiles.iter_mut() {
            tile.advance(t_ms);
        }
        let visible: Vec<usize> = (0..tiles.len()).filter(|&i| tiles[i].live(t_ms)).collect();
        let cells = grid(visible.len(), width, height);
        let scale = if cells.first().is_some_and(|c| c.h >= 240) {
            2
        } else {
            1
        };
        let band = 8 * scale + 6;
        let mut redraw_all = visible != layout;
        if !redraw_all {
            // A picture's size change moves its tile.
            redraw_all = visible.iter().zip(&placed).any(|(&i, (_, size))| {
                tiles[i].dirty && tiles[i].picture.as_ref().map(|p| (p.width, p.height)) != *size
            });
        }
        if redraw_all {
            fill(
                &mut canvas,
                Rect {
                    x: 0,
                    y: 0,
                    w: width,
                    h: height,
                },
                BLACK,
            );
            placed.clear();
        }
        for (slot, (&i, cell)) in visible.iter().zip(&cells).enumerate() {
            let tile = &mut tiles[i];
            if !redraw_all && !tile.dirty {
                continue;
            }
            let size = tile.picture.as_ref().map(|p| (p.width, p.height));
            let (sw, sh) = size.unwrap_or((4, 3));
            let r = fit(*cell, sw, sh, band);
            if let Some(p) = &tile.picture {
                blit(&mut canvas, r, p);
            }
            if redraw_all {
                let text = Rect {
                    x: cell.x,
                    y: (r.y + r.h + 3).min((cell.y + cell.h + 3).saturating_sub(band)),
                    w: cell.w,
                    h: band,
                };
                label(&mut canvas, text, &tile.source.name, scale);
                placed.push((r, size));
            } else if let Some(entry) = placed.get_mut(slot) {
                entry.1 = size;
            }
            tile.dirty = false;
        }
        for (_, tile) in tiles
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !visible.contains(i))
        {
            tile.dirty = true;
        }
        layout = visible;
        let packets = encoder
            .encode(&canvas, k, k % KEYFRAME_EVERY == 0)
            .map_err(|e| e.to_string())?;
        // Audio up to this frame's time first (timestamp order across tracks).
        while let Some((ats, data)) = next_audio.take() {
            if ats as i64 > ts {
                next_audio = Some((ats, data));
                break;
            }
            if ats < job.duration_ms {
                writer
                    .write_frame(2, ats, true, &data)
                    .map_err(|e| e.to_string())?;
            }
            next_audio = audio_packets.next();
        }
        for p in packets {
            writer
                .write_frame(1, ts as u64, p.key, &p.data)
                .map_err(|e| e.to_string())?;
            rendered.frames += 1;
        }
        if k % i64::from(FPS) == 0 && !progress(k as f64 / frames as f64) {
            return Err("cancelled".into());
        }
    }
    for p in encoder.finish().map_err(|e| e.to_string())? {
        let ts = (p.pts * 1000 / i64::from(FPS)) as u64;
        writer
            .write_frame(1, ts, p.key, &p.data)
            .map_err(|e| e.to_string())?;
        rendered.frames += 1;
    }
    while let Some((ats, data)) = next_audio.take() {
        if ats < job.duration_ms {
            writer
                .write_frame(2, ats, true, &data)
                .map_err(|e| e.to_string())?;
        }
        next_audio = audio_packets.next();
    }
    let out_file = writer
        .finalize(job.duration_ms)
        .map_err(|e| e.to_string())?
        .into_inner()
        .map_err(|e| format!("flush: {}", e.error()))?;
    out_file
        .sync_all()
        .map_err(|e| format!("fsync: {e} (the file may not be durable)"))?;
    rendered.decode_errors = tiles.iter().map(|t| t.errors).sum();
    progress(1.0);
    Ok(rendered)
}

/// The video sources of a finished recording: each video track's frames read from its file
/// (own WebM or the participant's muxed one), placed at its `start_offset_ms`.
pub fn sources(doc: &RecordingDoc, dir: &Path) -> Result<Vec<VideoSource>, String> {
    let mut out = Vec::new();
    for track in doc.tracks.iter().filter(|t| t.kind == Kind::Video) {
        let Some(start_ms) = track.start_offset_ms else {
            continue; // no frame was written
        };
        let path = dir.join(&track.file);
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", track.file))?;
        let info =
            read_webm(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", track.file))?;
        let Some(number) = info
            .tracks
            .iter()
            .find(|t| t.kind == WebmTrackKind::Video)
            .map(|t| t.number)
        else {
            continue;
        };
        let frames: Vec<(i64, Vec<u8>)> = info
            .blocks
            .into_iter()
            .filter(|b| b.track == number)
            .map(|b| (b.ts_ms, b.data))
            .collect();
        out.push(VideoSource {
            name: track.participant_name.clone(),
            start_ms,
            end_ms: start_ms + track.duration_ms as i64,
            frames,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grids: 1 tile fills the canvas, 2 side by side, 3 in a 2×2 grid with the last row
    /// centred; cells never overlap nor leave the canvas, corners are even.
    #[test]
    fn grids_reflow_and_stay_inside() {
        assert!(grid(0, 1280, 720).is_empty());
        for n in (1..=10).chain([50, 400]) {
            let cells = grid(n, 1280, 720);
            assert_eq!(cells.len(), n);
            for (i, a) in cells.iter().enumerate() {
                assert!(a.x + a.w <= 1280 && a.y + a.h <= 720, "{n}: {a:?}");
                assert!(a.x % 2 == 0 && a.y % 2 == 0 && a.w % 2 == 0 && a.h % 2 == 0);
                for b in &cells[i + 1..] {
                    let apart = a.x + a.w <= b.x
                        || b.x + b.w <= a.x
                        || a.y + a.h <= b.y
                        || b.y + b.h <= a.y;
                    assert!(apart, "{n}: {a:?} {b:?}");
                }
            }
        }
        assert_eq!(grid(2, 1280, 720)[0].y, grid(2, 1280, 720)[1].y);
        let three = grid(3, 1280, 720);
        assert!(three[2].y > three[0].y);
        assert_eq!(
            three[2].x,
            ((1280 - three[2].w) / 2) & !1,
            "last row centred"
        );
    }

    /// A 4:3 picture in a 16:9 cell is pillarboxed, centred, its aspect kept.
    #[test]
    fn fit_keeps_the_aspect() {
        let r = fit(
            Rect {
                x: 0,
                y: 0,
                w: 640,
                h: 360,
            },
            320,
            240,
            20,
        );
        assert_eq!(r.h, 340);
        assert!((f64::from(r.w) / f64::from(r.h) - 4.0 / 3.0).abs() < 0.01);
        assert_eq!(r.x, ((640 - r.w) / 2) & !1);
    }
}
