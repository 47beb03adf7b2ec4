//! `coi-proxy invite --qr FILE.png`: the invite link as a QR code, so a Delta Chat user can
//! scan it from a screen or a printout. Written by the command line, not the daemon: the link
//! comes back over the control socket like the text, and the file is the caller's. It holds
//! the link's tokens (whoever scans it becomes a verified contact), so it is made 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use qrcode::{Color, EcLevel, QrCode};

/// Pixels per QR module: a phone reads it from a screen across the room.
const SCALE: usize = 8;
/// The quiet zone around the code, in modules (ISO/IEC 18004 asks for 4).
const QUIET: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the invite link does not fit in a QR code: {0}")]
    Encode(qrcode::types::QrError),
    #[error("cannot write the QR code to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the QR code as PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// The PNG (8-bit greyscale, black on white) of `text` as a QR code, error correction M.
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(QrError::Encode)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![0xffu8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x0, y0) = ((i % modules + QUIET) * SCALE, (i / modules + QUIET) * SCALE);
        for y in y0..y0 + SCALE {
            pixels[y * side + x0..y * side + x0 + SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Writes the QR code of `text` to `path` (replacing it), mode 0600.
pub fn write(text: &str, path: &Path) -> Result<(), QrError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = png(text)?;
    let failed = |source| QrError::Write { path: path.to_path_buf(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(failed)?;
    file.write_all(&bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a PNG this module wrote back into the text of its QR code.
    fn read_back(bytes: &[u8]) -> String {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
        let (w, h) = (info.width as usize, info.height as usize);
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        grids[0].decode().unwrap().1
    }

    #[test]
    fn an_invite_link_reads_back_from_the_png() {
        let link = "https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&v=3&x=a&i=3nKlqsVn0fYnFHdKmYtxt0W7&s=Yx8C5nB5lLC0mAHpTHLtPqvr&a=alice%40example.org&n=Alice";
        let bytes = png(link).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(read_back(&bytes), link);
    }

    #[test]
    fn the_file_is_private_and_a_bad_path_says_where() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite.png");
        std::fs::write(&path, b"old").unwrap();
        write("https://i.delta.chat/#x", &path).unwrap();
        assert_eq!(read_back(&std::fs::read(&path).unwrap()), "https://i.delta.chat/#x");
        let missing = dir.path().join("no/such/dir/invite.png");
        let err = write("x", &missing).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/invite.png"), "{err}");
        // A new file is 0600 (the link's tokens are in it).
        let fresh = dir.path().join("fresh.png");
        write("x", &fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn text_too_long_for_any_qr_code_is_an_error() {
        let err = png(&"x".repeat(8000)).unwrap_err();
        assert!(matches!(err, QrError::Encode(_)), "{err}");
    }
}
