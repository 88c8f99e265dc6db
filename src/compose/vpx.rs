//! VP8 decode and encode through libvpx (Debian's `libvpx-dev`, bindings from
//! `env-libvpx-sys`): the one module of the crate that uses `unsafe`, kept small behind a
//! safe API. Every libvpx return code is checked; contexts are freed in `Drop`.
//!
//! Invariants: a context lives in a `Box` (never moved after init) and is destroyed exactly
//! once; image data handed to libvpx is borrowed only for the call; decoded images are copied
//! out before the next libvpx call on the same context.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use vpx_sys as ffi;

/// A libvpx failure: the call, its error code and libvpx's message.
#[derive(Debug, thiserror::Error)]
#[error("libvpx {call}: {code:?} {detail}")]
pub struct VpxError {
    call: &'static str,
    code: ffi::vpx_codec_err_t,
    detail: String,
}

/// A planar YUV 4:2:0 picture, tightly packed: Y (`width × height`), then U and V
/// (`(width+1)/2 × (height+1)/2` each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420 {
    /// Width in pixels (> 0).
    pub width: u32,
    /// Height in pixels (> 0).
    pub height: u32,
    /// The three planes, one after the other.
    pub data: Vec<u8>,
}

impl I420 {
    /// A picture of one colour (`y`, `u`, `v`).
    pub fn filled(width: u32, height: u32, (y, u, v): (u8, u8, u8)) -> Self {
        let (w, h) = (width as usize, height as usize);
        let c = w.div_ceil(2) * h.div_ceil(2);
        let mut data = vec![y; w * h + 2 * c];
        data[w * h..w * h + c].fill(u);
        data[w * h + c..].fill(v);
        Self {
            width,
            height,
            data,
        }
    }

    /// Width and height of the chroma planes.
    pub fn chroma_size(&self) -> (usize, usize) {
        (
            (self.width as usize).div_ceil(2),
            (self.height as usize).div_ceil(2),
        )
    }

    /// The planes (Y, U, V) with their widths (the strides).
    pub fn planes(&self) -> [(&[u8], usize); 3] {
        let w = self.width as usize;
        let y = w * self.height as usize;
        let (cw, ch) = self.chroma_size();
        let c = cw * ch;
        [
            (&self.data[..y], w),
            (&self.data[y..y + c], cw),
            (&self.data[y + c..y + 2 * c], cw),
        ]
    }

    /// The planes, writable.
    pub fn planes_mut(&mut self) -> [(&mut [u8], usize); 3] {
        let w = self.width as usize;
        let y = w * self.height as usize;
        let (cw, ch) = self.chroma_size();
        let c = cw * ch;
        let (yp, rest) = self.data.split_at_mut(y);
        let (up, vp) = rest.split_at_mut(c);
        [(yp, w), (up, cw), (&mut vp[..c], cw)]
    }
}

/// Checks a libvpx return code.
fn check(
    ctx: *mut ffi::vpx_codec_ctx_t,
    call: &'static str,
    code: ffi::vpx_codec_err_t,
) -> Result<(), VpxError> {
    if code == ffi::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    let detail = if ctx.is_null() {
        String::new()
    } else {
        // SAFETY: ctx is an initialized context; vpx_codec_error returns a static or
        // context-owned NUL-terminated string (never null for an initialized context).
        unsafe {
            let s = ffi::vpx_codec_error(ctx);
            if s.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        }
    };
    Err(VpxError { call, code, detail })
}

/// A zeroed context in a box (libvpx initializes it; its address never changes).
fn new_ctx() -> Box<ffi::vpx_codec_ctx_t> {
    // SAFETY: vpx_codec_ctx_t is a plain C struct for which all-zero is the documented
    // "uninitialized" state that the init calls expect.
    Box::new(unsafe { MaybeUninit::<ffi::vpx_codec_ctx_t>::zeroed().assume_init() })
}

/// A VP8 decoder.
pub struct Decoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
}

// SAFETY: the context is owned exclusively by this value and used through `&mut self` only.
unsafe impl Send for Decoder {}

impl Decoder {
    /// A new VP8 decoder (one thread).
    pub fn new() -> Result<Self, VpxError> {
        let mut ctx = new_ctx();
        let cfg = ffi::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: ctx is zeroed and boxed; cfg outlives the call; the ABI version is the
        // one the bindings were generated for.
        let code = unsafe {
            ffi::vpx_codec_dec_init_ver(
                &mut *ctx,
                ffi::vpx_codec_vp8_dx(),
                &cfg,
                0,
                ffi::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        // On failure the context is not initialized: it must not be destroyed.
        check(std::ptr::null_mut(), "vpx_codec_dec_init", code)?;
        Ok(Self { ctx })
    }

    /// Decodes one VP8 frame; returns the pictures it produced (none or one for VP8),
    /// copied out of libvpx. A corrupt frame is an error (the decoder stays usable; the
    /// next keyframe recovers it).
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<I420>, VpxError> {
        let ctx: *mut ffi::vpx_codec_ctx_t = &mut *self.ctx;
        let len = c_uint::try_from(frame.len()).map_err(|_| VpxError {
            call: "vpx_codec_decode",
            code: ffi::vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
            detail: "frame too large".into(),
        })?;
        // SAFETY: ctx is initialized; `frame` is valid for `len` bytes during the call.
        let code = unsafe {
            ffi::vpx_codec_decode(ctx, frame.as_ptr(), len, std::ptr::null_mut(), 0 as c_long)
        };
        check(ctx, "vpx_codec_decode", code)?;
        let mut out = Vec::new();
        let mut iter: ffi::vpx_codec_iter_t = std::ptr::null();
        loop {
            // SAFETY: ctx is initialized; iter starts null and is only advanced by libvpx.
            let img = unsafe { ffi::vpx_codec_get_frame(ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: libvpx returned a valid image that stays valid until the next decode
            // call on this context; it is copied out here.
            if let Some(picture) = unsafe { copy_image(&*img) } {
                out.push(picture);
            }
        }
        Ok(out)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialized in `new` and is destroyed once, here.
        let code = unsafe { ffi::vpx_codec_destroy(&mut *self.ctx) };
        if code != ffi::vpx_codec_err_t::VPX_CODEC_OK {
            tracing::warn!(?code, "vpx_codec_destroy (decoder) failed");
        }
    }
}

/// Copies an 8-bit I420 image out of libvpx; `None` for any other format.
///
/// # Safety
/// `img` must be a valid image whose planes hold `d_w × d_h` (chroma: halved, rounded up)
/// pixels at their strides.
unsafe fn copy_image(img: &ffi::vpx_image_t) -> Option<I420> {
    if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 || img.d_w == 0 || img.d_h == 0 {
        return None;
    }
    let mut picture = I420::filled(img.d_w, img.d_h, (0, 128, 128));
    let (w, h) = (img.d_w as usize, img.d_h as usize);
    let sizes = [
        (w, h),
        (w.div_ceil(2), h.div_ceil(2)),
        (w.div_ceil(2), h.div_ceil(2)),
    ];
    for (p, (dst, _)) in picture.planes_mut().into_iter().enumerate() {
        let (pw, ph) = sizes[p];
        let stride = img.stride[p] as isize;
        let base = img.planes[p];
        if base.is_null() {
            return None;
        }
        for row in 0..ph {
            // SAFETY: the caller guarantees `ph` rows of `pw` bytes at `stride`.
            let src = unsafe { std::slice::from_raw_parts(base.offset(stride * row as isize), pw) };
            dst[row * pw..(row + 1) * pw].copy_from_slice(src);
        }
    }
    Some(picture)
}

/// One encoded VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The frame.
    pub data: Vec<u8>,
    /// A keyframe.
    pub key: bool,
    /// Its presentation time in the encoder's time base (frames).
    pub pts: i64,
}

/// Settings of an [`Encoder`].
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    /// Picture width (even).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Frames per second (the time base is one frame).
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Encoder threads.
    pub threads: u32,
}

/// A VP8 encoder (realtime deadline, no lag: each frame's packet comes out of its own call).
pub struct Encoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
    width: u32,
    height: u32,
}

// SAFETY: the context is owned exclusively by this value and used through `&mut self` only.
unsafe impl Send for Encoder {}

impl Encoder {
    /// A new encoder for pictures of `config`'s size.
    pub fn new(config: EncoderConfig) -> Result<Self, VpxError> {
        let invalid = |detail: &str| VpxError {
            call: "vpx_codec_enc_init",
            code: ffi::vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
            detail: detail.into(),
        };
        if config.width == 0
            || config.height == 0
            || !config.width.is_multiple_of(2)
            || !config.height.is_multiple_of(2)
        {
            return Err(invalid("width and height must be even and non-zero"));
        }
        if config.fps == 0 {
            return Err(invalid("fps must be positive"));
        }
        // SAFETY: all-zero is a valid starting value; libvpx fills the defaults.
        let mut cfg = unsafe { MaybeUninit::<ffi::vpx_codec_enc_cfg_t>::zeroed().assume_init() };
        // SAFETY: cfg is writable; the interface pointer comes from libvpx.
        let code =
            unsafe { ffi::vpx_codec_enc_config_default(ffi::vpx_codec_vp8_cx(), &mut cfg, 0) };
        check(std::ptr::null_mut(), "vpx_codec_enc_config_default", code)?;
        cfg.g_w = config.width;
        cfg.g_h = config.height;
        cfg.g_timebase.num = 1;
        cfg.g_timebase.den = config.fps as c_int;
        cfg.rc_target_bitrate = config.bitrate_kbps;
        cfg.g_threads = config.threads.max(1);
        cfg.g_lag_in_frames = 0;
        cfg.g_error_resilient = 0;
        cfg.kf_max_dist = config.fps * 2;
        let mut ctx = new_ctx();
        // SAFETY: ctx is zeroed and boxed; cfg outlives the call.
        let code = unsafe {
            ffi::vpx_codec_enc_init_ver(
                &mut *ctx,
                ffi::vpx_codec_vp8_cx(),
                &cfg,
                0,
                ffi::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        check(std::ptr::null_mut(), "vpx_codec_enc_init", code)?;
        let mut encoder = Self {
            ctx,
            width: config.width,
            height: config.height,
        };
        // Speed over quality (realtime): cpu-used 8 of 16.
        // SAFETY: ctx is initialized; VP8E_SET_CPUUSED takes one int.
        let code = unsafe {
            ffi::vpx_codec_control_(
                &mut *encoder.ctx,
                ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                8 as c_int,
            )
        };
        check(&mut *encoder.ctx, "VP8E_SET_CPUUSED", code)?;
        Ok(encoder)
    }

    /// Encodes `picture` (the encoder's size) at `pts` (frames); `force_key` makes it a
    /// keyframe. Returns the packets that came out (one for VP8 without lag).
    pub fn encode(
        &mut self,
        picture: &I420,
        pts: i64,
        force_key: bool,
    ) -> Result<Vec<Packet>, VpxError> {
        if picture.width != self.width || picture.height != self.height {
            return Err(VpxError {
                call: "vpx_codec_encode",
                code: ffi::vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
                detail: format!(
                    "picture {}x{}, encoder {}x{}",
                    picture.width, picture.height, self.width, self.height
                ),
            });
        }
        // SAFETY: all-zero is valid before vpx_img_wrap fills it.
        let mut img = unsafe { MaybeUninit::<ffi::vpx_image_t>::zeroed().assume_init() };
        // SAFETY: the picture's buffer holds an I420 image of this (even) size packed with
        // stride alignment 1; libvpx only reads it during vpx_codec_encode below, while
        // `picture` is borrowed.
        let wrapped = unsafe {
            ffi::vpx_img_wrap(
                &mut img,
                ffi::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.width,
                self.height,
                1,
                picture.data.as_ptr() as *mut u8,
            )
        };
        if wrapped.is_null() {
            return Err(VpxError {
                call: "vpx_img_wrap",
                code: ffi::vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
                detail: String::new(),
            });
        }
        let flags = if force_key {
            ffi::VPX_EFLAG_FORCE_KF as ffi::vpx_enc_frame_flags_t
        } else {
            0
        };
        self.run(Some(&img), pts, flags)
    }

    /// Flushes the encoder: the packets still inside (none without lag, normally).
    pub fn finish(&mut self) -> Result<Vec<Packet>, VpxError> {
        self.run(None, -1, 0)
    }

    fn run(
        &mut self,
        img: Option<&ffi::vpx_image_t>,
        pts: i64,
        flags: ffi::vpx_enc_frame_flags_t,
    ) -> Result<Vec<Packet>, VpxError> {
        let ctx: *mut ffi::vpx_codec_ctx_t = &mut *self.ctx;
        let img = img.map_or(std::ptr::null(), |i| i as *const _);
        // SAFETY: ctx is initialized; img is null (flush) or a wrapped image valid for the call.
        let code = unsafe {
            ffi::vpx_codec_encode(ctx, img, pts, 1, flags, ffi::VPX_DL_REALTIME as c_ulong)
        };
        check(ctx, "vpx_codec_encode", code)?;
        let mut out = Vec::new();
        let mut iter: ffi::vpx_codec_iter_t = std::ptr::null();
        loop {
            // SAFETY: ctx is initialized; iter starts null and is advanced by libvpx only.
            let pkt = unsafe { ffi::vpx_codec_get_cx_data(ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: a non-null packet is valid until the next call on ctx; a frame packet's
            // `data.frame` holds `sz` bytes at `buf`. Copied out at once.
            unsafe {
                if (*pkt).kind == ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    let f = &(*pkt).data.frame;
                    let data =
                        std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize).to_vec();
                    out.push(Packet {
                        data,
                        key: f.flags & ffi::VPX_FRAME_IS_KEY != 0,
                        pts: f.pts,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialized in `new` and is destroyed once, here.
        let code = unsafe { ffi::vpx_codec_destroy(&mut *self.ctx) };
        if code != ffi::vpx_codec_err_t::VPX_CODEC_OK {
            tracing::warn!(?code, "vpx_codec_destroy (encoder) failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A solid picture encoded and decoded comes back the same size and about the same
    /// colour; a corrupt frame is an error, not a crash; sizes are checked.
    #[test]
    fn round_trip_keeps_size_and_colour() {
        let mut enc = Encoder::new(EncoderConfig {
            width: 160,
            height: 96,
            fps: 30,
            bitrate_kbps: 300,
            threads: 1,
        })
        .unwrap();
        let mut dec = Decoder::new().unwrap();
        let picture = I420::filled(160, 96, (81, 90, 240)); // red
        for i in 0..5 {
            let packets = enc.encode(&picture, i, i == 3).unwrap();
            assert_eq!(packets.len(), 1);
            assert_eq!(packets[0].key, i == 0 || i == 3, "frame {i}");
            let frames = dec.decode(&packets[0].data).unwrap();
            assert_eq!(frames.len(), 1);
            let f = &frames[0];
            assert_eq!((f.width, f.height), (160, 96));
            let [(y, _), (u, _), (v, _)] = f.planes();
            let mean = |p: &[u8]| p.iter().map(|&b| f64::from(b)).sum::<f64>() / p.len() as f64;
            assert!(
                (mean(y) - 81.0).abs() < 4.0
                    && (mean(u) - 90.0).abs() < 4.0
                    && (mean(v) - 240.0).abs() < 4.0
            );
        }
        assert!(enc.finish().unwrap().is_empty());
        assert!(dec.decode(&[0x00, 0x01, 0x02, 0x03, 0xff, 0xff]).is_err());
        assert!(enc
            .encode(&I420::filled(80, 48, (0, 0, 0)), 9, false)
            .is_err());
        assert!(Encoder::new(EncoderConfig {
            width: 161,
            height: 96,
            fps: 30,
            bitrate_kbps: 1,
            threads: 1
        })
        .is_err());
    }
}
