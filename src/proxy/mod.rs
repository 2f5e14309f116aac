//! The pingora proxy. (Being written.)
