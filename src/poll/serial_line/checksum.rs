//! Line checksums: verifying that a line arrived intact, and splitting the checksum off.
//!
//! Owns the checksum schemes (`ChecksumKind` in the config names one). Pure functions over
//! one line of text; knows nothing of ports, devices or points. Adding a scheme means one
//! more [`LineChecksum`] implementation and one more arm in [`scheme`].

use crate::config::ChecksumKind;

/// Why a line failed its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumError {
    /// The line has no checksum where the scheme expects one.
    Missing,
    /// The checksum text is not what the scheme writes (e.g. not two hex digits).
    Malformed,
    Mismatch {
        expected: u8,
        computed: u8,
    },
}

impl std::fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChecksumError::Missing => write!(f, "no checksum"),
            ChecksumError::Malformed => write!(f, "malformed checksum"),
            ChecksumError::Mismatch { expected, computed } => {
                write!(
                    f,
                    "checksum {expected:02X} but the line sums to {computed:02X}"
                )
            }
        }
    }
}

/// A checksum scheme over one line.
pub trait LineChecksum: Send + Sync {
    /// Checks `line` and returns it without the checksum, so that field extraction never
    /// sees the checksum text (NMEA's last field would otherwise read "545.4*47").
    fn verify<'a>(&self, line: &'a str) -> Result<&'a str, ChecksumError>;
}

/// NMEA 0183: `$` or `!`, the sentence, `*`, two hex digits of the XOR of every byte
/// between the start character and `*`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NmeaXor;

impl LineChecksum for NmeaXor {
    fn verify<'a>(&self, line: &'a str) -> Result<&'a str, ChecksumError> {
        let body = line
            .strip_prefix('$')
            .or_else(|| line.strip_prefix('!'))
            .ok_or(ChecksumError::Missing)?;
        let (sentence, sum) = body.rsplit_once('*').ok_or(ChecksumError::Missing)?;
        let sum = sum.trim_end();
        if sum.len() != 2 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::Malformed);
        }
        let expected = u8::from_str_radix(sum, 16).map_err(|_| ChecksumError::Malformed)?;
        let computed = nmea_xor(sentence.as_bytes());
        if computed != expected {
            return Err(ChecksumError::Mismatch { expected, computed });
        }
        // `line` minus the "*HH" suffix: the start character stays, filters expect it.
        Ok(&line[..line.len() - body.len() + sentence.len()])
    }
}

/// The XOR of `bytes`, as NMEA sums the characters between `$` and `*`.
pub fn nmea_xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// The implementation of a configured scheme.
pub fn scheme(kind: ChecksumKind) -> &'static dyn LineChecksum {
    match kind {
        ChecksumKind::Nmea => &NmeaXor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";

    #[test]
    fn a_textbook_gga_sentence_passes_and_loses_its_checksum() {
        assert_eq!(NmeaXor.verify(GGA), Ok(&GGA[..GGA.len() - 3]));
    }

    #[test]
    fn a_changed_character_fails_with_both_sums() {
        let bad = GGA.replace("545.4", "545.5");
        assert!(matches!(
            NmeaXor.verify(&bad),
            Err(ChecksumError::Mismatch { expected: 0x47, .. })
        ));
    }

    #[test]
    fn lowercase_hex_is_accepted_and_junk_is_malformed() {
        let body = "GPGLL,4916.45,N,12311.12,W,225444,A";
        let sum = nmea_xor(body.as_bytes());
        assert!(NmeaXor.verify(&format!("${body}*{sum:02x}")).is_ok());
        assert_eq!(
            NmeaXor.verify(&format!("${body}*ZZ")),
            Err(ChecksumError::Malformed)
        );
        assert_eq!(
            NmeaXor.verify(&format!("${body}")),
            Err(ChecksumError::Missing)
        );
        assert_eq!(NmeaXor.verify(body), Err(ChecksumError::Missing));
        assert_eq!(NmeaXor.verify("$*é"), Err(ChecksumError::Malformed));
    }
}
