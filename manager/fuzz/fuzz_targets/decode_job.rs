//! The handoff message decoder must reject anything malformed without panicking, and what
//! it accepts must survive a round trip unchanged.
#![no_main]

use handoff_core::protocol::{Job, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = Job::decode(data) {
        let again = job.encode().expect("a decoded job encodes");
        assert_eq!(Job::decode(&again).expect("re-decodes"), job);
    }
    if let Ok(reply) = Reply::decode(data) {
        assert_eq!(Reply::decode(&reply.encode()).expect("re-decodes"), reply);
    }
});
