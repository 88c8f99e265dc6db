//! Media between RTP and files: sequence/timestamp unwrapping and reordering, VP8 frame
//! assembly, keyframe (PLI) policy, clock mapping, and the IVF reader for test clips.

pub mod clock;
pub mod ivf;
pub mod opus;
pub mod pli;
pub mod rtp;
pub mod source;
pub mod vp8;
