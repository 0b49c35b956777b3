//! High availability decisions. `model` holds the data kept in the store;
//! `decide` is the pure HA function; the supervisor (IO) lives in `crate::supervisor`.

pub mod bugs;
pub mod callbacks;
pub mod decide;
pub mod eligibility;
pub mod health;
pub mod model;
pub mod view;
