//! `Range` header values against representations of any size: never a panic, and a single
//! range planned always lies inside the representation.
#![no_main]
use artifactstore::api::{RangePlan, range_plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let header = String::from_utf8_lossy(&data[8..]);
    if let RangePlan::Partial(start, end) = range_plan(Some(&header), size) {
        assert!(start <= end && end < size, "{header:?} of {size}: {start}-{end}");
    }
});
