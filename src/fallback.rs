//! In-process streaming, for when the file cannot be handed off (manager unreachable,
//! busy or refusing, or a SAPI without handoff support).
//!
//! It executes the same [`Plan`] as the manager, through PHP's own header API and output
//! layer, so every SAPI frames it correctly. Output buffers are dropped first (the file is
//! the response; buffering it would cost its size in memory), and output is switched off
//! afterwards so a later `echo` cannot corrupt the response.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use ext_php_rs::zend as headers;
use handoff_core::bucket::TokenBucket;
use handoff_core::plan::{Piece, Plan};

use crate::ffi::{self, Bailout};

const CHUNK: usize = 128 * 1024;

/// Sleeps as needed to keep an average of `rate` bytes per second: a bucket that starts
/// empty and keeps every unused byte (a slow output layer may catch up), paid after each
/// write.
struct Pace {
    bucket: Option<TokenBucket>,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            bucket: (rate > 0)
                .then(|| TokenBucket::holding(rate, f64::INFINITY, 0.0, Instant::now())),
        }
    }

    fn after(&mut self, n: u64) {
        let Some(bucket) = &mut self.bucket else {
            return;
        };
        bucket.take(n);
        bucket.refill(Instant::now());
        let ahead = bucket.time_until(0.0);
        if !ahead.is_zero() {
            std::thread::sleep(ahead);
        }
    }
}

/// Streams `plan` from `file`; `rate` (bytes/s, 0 = unlimited) is kept as the manager
/// would keep it.
pub fn stream(plan: &Plan, file: &File, rate: u64) -> Result<(), Bailout> {
    let mut pace = Pace::new(rate);
    ffi::discard_output_buffers()?;
    // Command-line SAPIs may have written already and send no head: body only.
    if !ffi::headers_sent() {
        apply_head(&plan.head)?;
    }
    // Sends the head now, also when there is no body to trigger it.
    ffi::send_headers()?;
    let mut buf = vec![0u8; CHUNK];
    'body: for piece in &plan.body {
        match piece {
            Piece::Bytes(b) => {
                ffi::output_write(b)?;
            }
            Piece::File { offset, length } => {
                let (mut pos, end) = (*offset, offset + length);
                while pos < end {
                    let want = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
                    match file.read_at(&mut buf[..want], pos) {
                        // The file shrank: stop; the client sees a short body.
                        Ok(0) => break 'body,
                        Ok(n) => {
                            ffi::output_write(&buf[..n])?;
                            pos += n as u64;
                            pace.after(n as u64);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break 'body,
                    }
                }
            }
        }
    }
    ffi::disable_output()?;
    Ok(())
}

/// Replaces the SAPI's pending head with the planned one (which already holds the
/// script's surviving fields).
fn apply_head(head: &handoff_core::head::Head) -> Result<(), Bailout> {
    let _ = headers::remove_all_headers();
    if head.reason.is_empty() {
        let _ = headers::set_response_code(head.status);
    } else {
        let _ = headers::set_header(&format!("HTTP/1.1 {} {}", head.status, head.reason));
    }
    for h in &head.headers {
        ffi::add_header_line(&h.line())?;
    }
    if head.get("Content-Type").is_none() {
        ffi::suppress_default_content_type();
    }
    Ok(())
}
