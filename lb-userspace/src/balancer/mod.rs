//! Pure load-balancing logic, testable without root: maglev table builder, pool algorithms, health state.

pub mod algorithm;
pub mod health;
pub mod levers;
pub mod maglev;
