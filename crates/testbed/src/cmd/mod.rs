//! One module per verb.

/// A `clap::ValueEnum` for an enum of a library crate, through a newtype
/// (the orphan rule forbids implementing it on the enum itself): each
/// variant's command-line value and help are listed once, here in the CLI,
/// and the `match` is exhaustive, so a variant added to the library cannot
/// be forgotten.
macro_rules! value_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($inner:ty) {
            $($variant:path => $value:literal $(: $help:literal)?,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis struct $name(pub $inner);

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                const VARIANTS: &[$name] = &[$($name($variant)),*];
                VARIANTS
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(match self.0 {
                    $($variant => clap::builder::PossibleValue::new($value)$(.help($help))?,)*
                })
            }
        }
    };
}

pub mod cache;
pub mod check;
pub mod ci;
pub mod cluster;
pub mod doctor;
pub mod fault;
pub mod image;
pub mod init;
pub mod plan;
pub mod snapshot;
pub mod test;
