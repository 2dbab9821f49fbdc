//! The response planner must never panic and must keep its promises for any request:
//! file ranges inside the file, Content-Length equal to the body, a head that cannot split
//! the response.
#![no_main]

use handoff_core::conditional::Conditions;
use handoff_core::head::Header;
use handoff_core::plan::{
    plan, FileInfo, Framing, Method, Options, Piece, Request, ScriptResponse,
};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let size = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    let method = match data[4] % 3 {
        0 => Method::Get,
        1 => Method::Head,
        _ => Method::Other,
    };
    let status = 100 + u16::from_le_bytes([data[5], data[6]]) % 500;
    let text = String::from_utf8_lossy(&data[7..]);
    let mut fields = text.split('\n').map(str::to_string);
    let mut next = || fields.next().filter(|s| !s.is_empty());
    let request = Request {
        method,
        range: next(),
        conditions: Conditions {
            if_match: next(),
            if_none_match: next(),
            if_modified_since: next(),
            if_unmodified_since: next(),
            if_range: next(),
        },
    };
    let script = ScriptResponse {
        status,
        reason: String::new(),
        headers: next()
            .map(|v| vec![Header::new("ETag", v.replace(['\r', '\0'], ""))])
            .unwrap_or_default(),
    };
    let file = FileInfo {
        size,
        modified: Some(UNIX_EPOCH + Duration::from_secs(u64::from(data[7]) << 20)),
        inode: 1,
    };
    let p = plan(
        file,
        &request,
        &script,
        &Options::default(),
        "f.bin",
        Framing::Http,
    );
    for piece in &p.body {
        if let Piece::File { offset, length } = piece {
            assert!(offset + length <= size, "range outside the file");
        }
    }
    if method != Method::Head && p.head.status != 304 {
        if let Some(len) = p.head.get("Content-Length") {
            assert_eq!(len.parse::<u64>().ok(), Some(p.body_len()));
        }
    }
    p.head.validate().expect("planned head is valid");
});
