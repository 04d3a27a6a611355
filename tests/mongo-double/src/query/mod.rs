//! Query machinery shared by commands: comparison, paths, filters, projection, sort,
//! expressions and aggregation stages.

pub mod compare;
pub mod expr;
pub mod matcher;
pub mod path;
pub mod pipeline;
pub mod projection;
pub mod sort;
