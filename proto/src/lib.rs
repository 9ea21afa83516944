//! Generated types and tonic stubs for `warren.v1`. Nothing but the generated code
//! lives here: conversion to Warren's own types is `warren::api::convert`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("warren.v1");
}
