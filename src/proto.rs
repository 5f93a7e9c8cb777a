pub mod v1 { }
