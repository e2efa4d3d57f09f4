//! The `.npy` format: tripmine writes version 1.0, 2-D float32 in C order (what `numpy.load`
//! reads); it reads any 2-D float16/float32/float64 array, either byte order, C or Fortran order,
//! and converts it to float32 rows. Every size in the header is checked arithmetic: a crafted
//! header is an error, never a panic or a wrapped allocation.

use std::io::{self, Write};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Headers longer than this are refused before they are parsed (numpy writes under 200 bytes).
const MAX_HEADER: usize = 1 << 16;

/// The magic, version and header of a C-order array of `descr` and `shape`, padded so that
/// magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
fn write_header<W: Write>(w: &mut W, descr: &str, shape: &str) -> io::Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())
}

pub fn write_f32_matrix<W: Write>(
    w: &mut W,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> io::Result<()> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    write_header(w, "<f4", &format!("({rows}, {cols})"))?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.write_all(&bytes)
}

/// Writes a 1-D little-endian int64 array (what `numpy.load` reads as `np.int64`).
pub fn write_i64_vector<W: Write>(w: &mut W, data: &[i64]) -> io::Result<()> {
    write_header(w, "<i8", &format!("({},)", data.len()))?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.write_all(&bytes)
}

/// A 2-D array read from `.npy`, converted to float32 rows in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    /// The dtype as the file declared it, e.g. `<f8`.
    pub dtype: String,
    pub fortran_order: bool,
}

#[derive(Clone, Copy)]
enum Float {
    F16,
    F32,
    F64,
}

/// The header text of a `.npy` file and the bytes after it.
fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
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
    if header_len > MAX_HEADER {
        return Err(format!(
            "header claims {header_len} bytes; .npy headers are under {MAX_HEADER}"
        ));
    }
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or unreadable .npy header")?;
    Ok((header, &bytes[start + header_len..]))
}

/// The text after `'key':` in a header.
fn header_field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    Some(header[at..].trim_start_matches([':', ' ']))
}

/// Parses a 1-D little-endian int64 array (what numpy writes for `np.int64` on x86-64).
pub fn read_i64_vector(bytes: &[u8]) -> Result<Vec<i64>, String> {
    let (header, body) = split_header(bytes)?;
    let descr = header_field(header, "descr")
        .and_then(|d| d.split('\'').nth(1))
        .ok_or("no dtype in .npy header")?;
    if descr != "<i8" {
        return Err(format!(
            "dtype is {descr}; expected <i8 (int64, as tripmine.write_shards writes)"
        ));
    }
    let shape = header_field(header, "shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?;
    let dims: Vec<&str> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let n: usize = match dims[..] {
        [n] => n.parse().map_err(|_| format!("bad shape ({shape})"))?,
        _ => return Err(format!("array has shape ({shape}); expected 1 dimension")),
    };
    if Some(body.len()) != n.checked_mul(8) {
        return Err(format!(
            "holds {} bytes of data; shape ({n},) of int64 needs {}",
            body.len(),
            n.saturating_mul(8)
        ));
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Parses a 2-D float array; the error says what is wrong with it and what tripmine reads.
pub fn read_matrix(bytes: &[u8]) -> Result<Matrix, String> {
    let (header, body) = split_header(bytes)?;
    let field = |key: &str| header_field(header, key);
    let descr = field("descr")
        .and_then(|d| d.split('\'').nth(1))
        .ok_or("no dtype in .npy header")?;
    let (little, float) = match descr.as_bytes() {
        [order @ (b'<' | b'>' | b'='), b'f', size @ (b'2' | b'4' | b'8')] => (
            *order != b'>',
            match size {
                b'2' => Float::F16,
                b'4' => Float::F32,
                _ => Float::F64,
            },
        ),
        _ => {
            return Err(format!(
                "dtype is {descr}; tripmine reads float16, float32 or float64 (convert with \
                 array.astype(numpy.float32))"
            ))
        }
    };
    let fortran_order = match field("fortran_order") {
        Some(f) if f.starts_with("True") => true,
        Some(f) if f.starts_with("False") => false,
        _ => return Err("no fortran_order in .npy header".into()),
    };
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
    let width = match float {
        Float::F16 => 2,
        Float::F32 => 4,
        Float::F64 => 8,
    };
    let needed = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| format!("shape ({rows}, {cols}) is too large to address"))?;
    if body.len() != needed {
        return Err(format!(
            "holds {} bytes of data; shape ({rows}, {cols}) of {descr} needs {needed}",
            body.len()
        ));
    }
    let values: Vec<f32> = body
        .chunks_exact(width)
        .map(|c| match (float, little) {
            (Float::F16, true) => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
            (Float::F16, false) => f16_to_f32(u16::from_be_bytes([c[0], c[1]])),
            (Float::F32, true) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            (Float::F32, false) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            (Float::F64, true) => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
            (Float::F64, false) => f64::from_be_bytes(c.try_into().expect("8 bytes")) as f32,
        })
        .collect();
    let data = if fortran_order && rows > 1 && cols > 1 {
        // Column-major: element (r, c) is at c * rows + r.
        let mut out = vec![0.0; values.len()];
        for (c, column) in values.chunks_exact(rows).enumerate() {
            for (r, v) in column.iter().enumerate() {
                out[r * cols + c] = *v;
            }
        }
        out
    } else {
        values
    };
    Ok(Matrix {
        rows,
        cols,
        data,
        dtype: descr.to_string(),
        fortran_order,
    })
}

/// Parses a 2-D array of any float dtype tripmine reads, as float32 rows (see [`read_matrix`]).
pub fn read_f32_matrix(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>), String> {
    read_matrix(bytes).map(|m| (m.rows, m.cols, m.data))
}

/// IEEE half precision to single (exact: every half is a single).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise the fraction.
            let shift = f.leading_zeros() - 21;
            let f = (f << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (f << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(header: &str, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(body);
        out
    }

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
        buf[at + 1] = b'i';
        assert!(read_f32_matrix(&buf).unwrap_err().contains("float32"));
    }

    #[test]
    fn float16_float64_big_endian_and_fortran_order_are_converted() {
        // [[1, 2, 3], [4, 5, 6]] stored column-major as float64.
        let body: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let m = read_matrix(&with_header(
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n",
            &body,
        ))
        .unwrap();
        assert_eq!(m.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(m.dtype, "<f8");
        // float16: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, smallest subnormal 2^-24.
        let body: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x0001]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let m = read_matrix(&with_header(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }\n",
            &body,
        ))
        .unwrap();
        assert_eq!(m.data, [1.0, -2.0, 0.5, 2f32.powi(-24)]);
        let body: Vec<u8> = [1.5f32, -3.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let m = read_matrix(&with_header(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 2), }\n",
            &body,
        ))
        .unwrap();
        assert_eq!(m.data, [1.5, -3.0]);
    }

    /// Regression: this header panicked with a multiply overflow (and wrapped in release).
    #[test]
    fn a_huge_shape_is_an_error_not_a_panic() {
        for shape in [
            "(18446744073709551615, 18446744073709551615)",
            "(4611686018427387904, 2)",
            "(2305843009213693952, 2)",
            "(99999999999999999999999, 1)",
        ] {
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            let err = read_matrix(&with_header(&h, &[0; 8])).unwrap_err();
            assert!(
                err.contains("too large") || err.contains("bad shape"),
                "{err}"
            );
        }
    }
}
