//! The fuzz targets' bodies: each takes arbitrary bytes, feeds them to one parser of input the
//! hub or spoke does not control, and panics only when a property of the result breaks (a
//! panic inside the parser is a finding too). They are plain functions so that the kept corpus
//! replays as an ordinary test (`tests/corpus.rs`) without the coverage-instrumented build that
//! `libfuzzer/` needs (`just fuzz`).

mod claims;
mod layers;
mod lint;
mod mapping;
mod trailer;

pub use claims::claims;
pub use layers::layers;
pub use lint::lint;
pub use mapping::mapping;
pub use trailer::trailer;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, as `libfuzzer/fuzz_targets/` and `corpus/` name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("claims", claims),
    ("mapping", mapping),
    ("lint", lint),
    ("layers", layers),
    ("trailer", trailer),
];
