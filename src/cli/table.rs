//! Aligned text columns for people: no borders, two spaces between
//! columns, no trailing whitespace.

/// Rows of cells under an optional header.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first line is `header`; empty for a bare
    /// `name  value` listing.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every line, each ending in a newline.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header)
            .filter(|h| !h.is_empty())
            .chain(&self.rows)
            .collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (cell, width) in line.iter().zip(&widths) {
                text.push_str(cell);
                let pad = width - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_align_without_trailing_space() {
        let mut table = Table::new(&["kind", "key", "used"]);
        table.row(vec!["concurrency".into(), "jobs".into(), "1".into()]);
        table.row(vec!["rate_limit".into(), "é".into(), "".into()]);
        assert_eq!(
            table.render(),
            "kind         key   used\n\
             concurrency  jobs  1\n\
             rate_limit   é\n"
        );
    }

    #[test]
    fn no_header_no_header_line() {
        let mut table = Table::new(&[]);
        table.row(vec!["amount".into(), "1".into()]);
        assert_eq!(table.render(), "amount  1\n");
    }
}
