//! The `.npy` format (version 1.0) for a 2-D float32 array in C order: what `numpy.load` reads.

use std::io::{self, Write};

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn write_f32_matrix<W: Write>(
    w: &mut W,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> io::Result<()> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    w.write_all(&bytes)
}

/// Parses a 2-D little-endian float32 C-order array; the error says what is wrong with it.
pub fn read_f32_matrix(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or unreadable .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|d| d.split('\'').nth(1))
        .ok_or("no dtype in .npy header")?;
    if descr != "<f4" {
        return Err(format!("dtype is {descr}; expected float32 (<f4)"));
    }
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("array is in Fortran order; expected C order".into());
    }
    let shape = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape ({shape})")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!(
            "array has shape ({shape}); expected 2 dimensions (N, D)"
        ));
    };
    let body = &bytes[start + header_len..];
    if body.len() != rows * cols * 4 {
        return Err(format!(
            "holds {} bytes of data; shape ({rows}, {cols}) needs {}",
            body.len(),
            rows * cols * 4
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((rows, cols, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aligned_header() {
        let mut buf = Vec::new();
        write_f32_matrix(&mut buf, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let header_end = 10 + u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!(header_end % 64, 0);
        let (r, c, d) = read_f32_matrix(&buf).unwrap();
        assert_eq!((r, c), (2, 3));
        assert_eq!(d[5], -6.5);
    }

    #[test]
    fn wrong_dtype_and_truncation_are_named() {
        let mut buf = Vec::new();
        write_f32_matrix(&mut buf, 2, 2, &[0.0; 4]).unwrap();
        assert!(read_f32_matrix(&buf[..buf.len() - 1])
            .unwrap_err()
            .contains("holds"));
        let at = buf.windows(3).position(|w| w == b"<f4").unwrap();
        buf[at + 2] = b'8';
        assert!(read_f32_matrix(&buf).unwrap_err().contains("float32"));
    }
}
