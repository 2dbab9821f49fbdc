//! Queuing the body: the next piece (literal bytes into the output buffer, a file range as
//! the next `sendfile` run), cut into FastCGI records behind a web server, with the last
//! record read into memory so that it leaves in one send with the end-of-stream records.

use handoff_core::io_class::{classify, IoClass};
use handoff_core::plan::Piece;

use super::Download;
use crate::downloads::fcgi;
use crate::reporting::outcome::Outcome;

impl Download {
    /// Queues up to `max` bytes of the next body piece: literal bytes into `out`, a file
    /// range as the next `sendfile` run. Returns false when the body is all queued.
    fn queue_next_piece(&mut self, max: u64) -> bool {
        let Some(piece) = self.pieces.front_mut() else {
            return false;
        };
        match piece {
            Piece::Bytes(b) => {
                let n = usize::try_from(max).unwrap_or(usize::MAX).min(b.len());
                self.out.extend_from_slice(&b[..n]);
                self.body_in_out += n as u64;
                b.drain(..n);
            }
            Piece::File { offset, length } => {
                let n = max.min(*length);
                self.pos = *offset;
                self.run_left = n;
                *offset += n;
                *length -= n;
            }
        }
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        true
    }

    /// Queues the next part of the body: for raw HTTP the next piece; behind FastCGI what
    /// the [`fcgi::Framer`] asks for (the rest of the current record, the next record
    /// header, or the last record read into memory so that it leaves in the same send as
    /// the end-of-stream records). Returns false when everything is queued.
    pub(super) fn frame_next(&mut self) -> Result<bool, Outcome> {
        let Some(framer) = self.framer.as_mut() else {
            return Ok(self.queue_next_piece(u64::MAX));
        };
        match framer.next(&mut self.out) {
            fcgi::Next::Content(left) => {
                let before = self.body_in_out + self.run_left;
                if !self.queue_next_piece(left) {
                    return Err(Outcome::Aborted("body shorter than its records".into()));
                }
                let queued = self.body_in_out + self.run_left - before;
                if let Some(framer) = self.framer.as_mut() {
                    framer.consumed(queued);
                }
                Ok(true)
            }
            fcgi::Next::Header | fcgi::Next::End => Ok(true),
            fcgi::Next::Last(len) => {
                // The last record: at most MAX_RECORD_BODY bytes, because the framer's
                // count is the exact sum of the pieces left (no piece can be longer).
                let left = handoff_core::plan::checked_body_len(self.pieces.make_contiguous());
                if left != Some(len) {
                    return Err(Outcome::Aborted("body does not match its records".into()));
                }
                let mut last = Vec::with_capacity(len as usize);
                while let Some(piece) = self.pieces.pop_front() {
                    match piece {
                        Piece::Bytes(b) => last.extend_from_slice(&b),
                        Piece::File { offset, length } => {
                            self.read_into(&mut last, offset, length)?
                        }
                    }
                }
                if let Some(framer) = self.framer.as_mut() {
                    framer.finish(&mut self.out, &last);
                }
                self.body_in_out += last.len() as u64;
                Ok(true)
            }
            fcgi::Next::Done => Ok(false),
        }
    }

    fn read_into(&self, out: &mut Vec<u8>, offset: u64, length: u64) -> Result<(), Outcome> {
        let start = out.len();
        out.resize(start + length as usize, 0);
        let mut filled = start;
        while filled < out.len() {
            let off = i64::try_from(offset + (filled - start) as u64).unwrap_or(i64::MAX);
            match nix::sys::uio::pread(&self.file, &mut out[filled..], off) {
                Ok(0) => return Err(Outcome::Truncated),
                Ok(n) => filled += n,
                Err(e) if classify(e) == IoClass::Retry => {}
                Err(e) => return Err(Outcome::Aborted(format!("reading file: {}", e.desc()))),
            }
        }
        Ok(())
    }
}
