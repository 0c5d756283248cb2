//! Line charts as PNG files, drawn here: axes with round ticks, one line per server,
//! a legend. Text uses a built-in 5x7 pixel font (upper case), so nothing is needed but
//! zlib for the PNG itself.

use std::io::Write;

const WIDTH: usize = 900;
const HEIGHT: usize = 500;
const LEFT: usize = 110;
const RIGHT: usize = 200;
const TOP: usize = 70;
const BOTTOM: usize = 70;

/// One line of a chart.
pub(crate) struct Series {
    pub(crate) name: String,
    /// (x, y) points, drawn in order.
    pub(crate) points: Vec<(f64, f64)>,
}

/// A chart: a title, axis labels, and lines.
pub(crate) struct Chart {
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    pub(crate) series: Vec<Series>,
}

const COLORS: [[u8; 3]; 5] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
];

impl Chart {
    /// The chart as a PNG file.
    pub(crate) fn png(&self) -> std::io::Result<Vec<u8>> {
        let mut canvas = Canvas::new();
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max);
        let y_max = points.map(|p| p.1).fold(0.0, f64::max);
        let (x_step, x_top) = ticks(x_max);
        let (y_step, y_top) = ticks(y_max);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let at = |x: f64, y: f64| {
            (
                LEFT as f64 + x / x_top * plot_w as f64,
                (TOP + plot_h) as f64 - y / y_top * plot_h as f64,
            )
        };
        let grid = [225, 225, 225];
        let ink = [40, 40, 40];
        let mut y = 0.0;
        while y <= y_top + y_step / 2.0 {
            let (_, py) = at(0.0, y);
            canvas.line((LEFT as f64, py), ((LEFT + plot_w) as f64, py), grid, 1);
            let label = number(y);
            canvas.text(
                LEFT - 10 - text_width(&label, 2),
                py as usize - 7,
                &label,
                ink,
                2,
            );
            y += y_step;
        }
        let mut x = 0.0;
        while x <= x_top + x_step / 2.0 {
            let (px, _) = at(x, 0.0);
            canvas.line((px, TOP as f64), (px, (TOP + plot_h) as f64), grid, 1);
            let label = number(x);
            let w = text_width(&label, 2);
            canvas.text(
                (px as usize).saturating_sub(w / 2),
                TOP + plot_h + 10,
                &label,
                ink,
                2,
            );
            x += x_step;
        }
        let (x0, y0) = at(0.0, 0.0);
        canvas.line((x0, y0), (x0, TOP as f64), ink, 2);
        canvas.line((x0, y0), ((LEFT + plot_w) as f64, y0), ink, 2);
        canvas.text(LEFT, 10, &self.title, ink, 2);
        let x_label_w = text_width(&self.x_label, 2);
        canvas.text(
            LEFT + plot_w / 2 - x_label_w / 2,
            HEIGHT - 28,
            &self.x_label,
            ink,
            2,
        );
        canvas.text(8, TOP - 32, &self.y_label, ink, 2);
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut last = None;
            for &(x, y) in &series.points {
                let p = at(x, y);
                if let Some(prev) = last {
                    canvas.line(prev, p, color, 3);
                }
                canvas.dot(p, color);
                last = Some(p);
            }
            let ly = TOP + 10 + i * 28;
            let lx = WIDTH - RIGHT + 20;
            canvas.line(
                (lx as f64, ly as f64 + 7.0),
                (lx as f64 + 24.0, ly as f64 + 7.0),
                color,
                3,
            );
            canvas.text(lx + 32, ly, &series.name, ink, 2);
        }
        canvas.png()
    }
}

/// A round tick step for values up to `max`, and the axis' top (a multiple of it).
fn ticks(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil() * step)
}

/// A tick label: 12,000 as "12K", 2,500,000 as "2.5M", 0.25 as "0.25".
fn number(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if v >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if v >= 1e4 {
        format!("{}K", trim(format!("{:.1}", v / 1e3)))
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.2}"))
    }
}

fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * 6 * scale
}

struct Canvas {
    pixels: Vec<[u8; 3]>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            pixels: vec![[255, 255, 255]; WIDTH * HEIGHT],
        }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            self.pixels[y as usize * WIDTH + x as usize] = color;
        }
    }

    /// A line `width` pixels thick.
    fn line(&mut self, from: (f64, f64), to: (f64, f64), color: [u8; 3], width: i64) {
        let steps = (to.0 - from.0)
            .abs()
            .max((to.1 - from.1).abs())
            .ceil()
            .max(1.0) as i64;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let x = (from.0 + (to.0 - from.0) * t).round() as i64;
            let y = (from.1 + (to.1 - from.1) * t).round() as i64;
            for dx in 0..width {
                for dy in 0..width {
                    self.set(x + dx - width / 2, y + dy - width / 2, color);
                }
            }
        }
    }

    fn dot(&mut self, at: (f64, f64), color: [u8; 3]) {
        let (cx, cy) = (at.0.round() as i64, at.1.round() as i64);
        for dx in -4..=4i64 {
            for dy in -4..=4i64 {
                if dx * dx + dy * dy <= 16 {
                    self.set(cx + dx, cy + dy, color);
                }
            }
        }
    }

    /// Text in the built-in font (upper-cased), its top left at `(x, y)`.
    fn text(&mut self, x: usize, y: usize, s: &str, color: [u8; 3], scale: usize) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch.to_ascii_uppercase());
            let gx = x + i * 6 * scale;
            for (row, bits) in rows.iter().enumerate() {
                for (col, bit) in bits.bytes().enumerate() {
                    if bit != b'#' {
                        continue;
                    }
                    for sx in 0..scale {
                        for sy in 0..scale {
                            let px = (gx + col * scale + sx) as i64;
                            let py = (y + row * scale + sy) as i64;
                            self.set(px, py, color);
                        }
                    }
                }
            }
        }
    }

    /// The image as a PNG (8-bit RGB, no interlace).
    fn png(&self) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(HEIGHT * (1 + WIDTH * 3));
        for row in self.pixels.chunks(WIDTH) {
            raw.push(0);
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let data = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(WIDTH as u32).to_be_bytes());
        ihdr.extend_from_slice(&(HEIGHT as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, body) in [(b"IHDR", &ihdr), (b"IDAT", &data), (b"IEND", &Vec::new())] {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            out.extend_from_slice(kind);
            out.extend_from_slice(body);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        Ok(out)
    }
}

/// A 5x7 glyph, rows top to bottom (`#` set); unknown characters are blank.
fn glyph(c: char) -> [&'static str; 7] {
    match c {
        '0' => [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
        '1' => [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        '2' => [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
        '3' => [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
        '4' => [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
        '5' => [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
        '6' => [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
        '7' => [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
        '8' => [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
        '9' => [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
        'A' => [
            " ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'B' => [
            "#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### ",
        ],
        'C' => [
            " ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### ",
        ],
        'D' => [
            "###  ", "#  # ", "#   #", "#   #", "#   #", "#  # ", "###  ",
        ],
        'E' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####",
        ],
        'F' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    ",
        ],
        'G' => [
            " ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####",
        ],
        'H' => [
            "#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'I' => [
            " ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'J' => [
            "  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  ",
        ],
        'K' => [
            "#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #",
        ],
        'L' => [
            "#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####",
        ],
        'M' => [
            "#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #",
        ],
        'N' => [
            "#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #",
        ],
        'O' => [
            " ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'P' => [
            "#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    ",
        ],
        'Q' => [
            " ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #",
        ],
        'R' => [
            "#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #",
        ],
        'S' => [
            " ####", "#    ", "#    ", " ### ", "    #", "    #", "#### ",
        ],
        'T' => [
            "#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'U' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'V' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  ",
        ],
        'W' => [
            "#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # ",
        ],
        'X' => [
            "#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #",
        ],
        'Y' => [
            "#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'Z' => [
            "#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####",
        ],
        '.' => [
            "     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ",
        ],
        ',' => [
            "     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   ",
        ],
        ':' => [
            "     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ",
        ],
        '-' => [
            "     ", "     ", "     ", "#####", "     ", "     ", "     ",
        ],
        '+' => [
            "     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     ",
        ],
        '/' => [
            "     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     ",
        ],
        '(' => [
            "   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ",
        ],
        ')' => [
            " #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ",
        ],
        '%' => [
            "##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##",
        ],
        '=' => [
            "     ", "     ", "#####", "     ", "#####", "     ", "     ",
        ],
        _ => ["     "; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(ticks(19_000.0), (5_000.0, 20_000.0));
        assert_eq!(ticks(8_700.0), (2_000.0, 10_000.0));
        let (step, top) = ticks(0.51);
        assert!(
            (step - 0.2).abs() < 1e-9 && (top - 0.6).abs() < 1e-9,
            "{step} {top}"
        );
        assert_eq!(number(20_000.0), "20K");
        assert_eq!(number(2_500_000.0), "2.5M");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1_000.0), "1000");
    }

    #[test]
    fn a_chart_is_a_png_of_the_right_size() {
        let chart = Chart {
            title: "memory".into(),
            x_label: "connections".into(),
            y_label: "bytes".into(),
            series: vec![Series {
                name: "switchboard".into(),
                points: vec![(1_000.0, 4_800.0), (19_000.0, 1_761.0)],
            }],
        };
        let png = chart.png().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            WIDTH as u32
        );
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
