//! `imperium ctl top`: a live terminal view of the fleet (like uwsgitop and
//! `systemd-cgtop`), drawn with ratatui. It asks the emperor for the table
//! once a second; the emperor measures what each vassal uses only when it
//! is asked, so nothing wakes up while nobody looks.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Row, Table};

/// How often the table is fetched again.
const REFRESH: Duration = Duration::from_secs(1);

/// Runs the live view until q (or Esc, or Ctrl-C).
pub fn live(socket: &PathBuf, sort: &str) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("imperium ctl top: the live view needs a terminal; `imperium ctl top --once` prints one table");
    }
    // the first look fails here, in plain text, when no emperor answers
    let first = crate::ctl::list(socket)?;
    let mut terminal = ratatui::init();
    let r = run(&mut terminal, socket, sort, first);
    ratatui::restore();
    r
}

/// What the view shows.
struct View {
    sort: String,
    rows: Vec<Vec<String>>,
    status: String,
    /// CPU seconds of each vassal at the previous look.
    last: HashMap<String, (f64, Instant)>,
}

impl View {
    /// Takes a new look at the table `vs`.
    fn update(&mut self, vs: Vec<serde_json::Value>) {
        let now = Instant::now();
        let mut rates = HashMap::new();
        let mut last = HashMap::new();
        for v in &vs {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let cpu = v["usage"]["cpu_seconds"].as_f64().unwrap_or(0.0);
            if let Some((c, t)) = self.last.get(&name) {
                let dt = now.duration_since(*t).as_secs_f64();
                if dt > 0.0 && cpu >= *c {
                    rates.insert(name.clone(), (cpu - c) / dt * 100.0);
                }
            }
            last.insert(name, (cpu, now));
        }
        self.last = last;
        self.status = format!("{} vassal(s)", vs.len());
        self.rows = crate::ctl::top_rows(vs, &self.sort, Some(&rates));
    }
}

fn run(
    terminal: &mut ratatui::DefaultTerminal,
    socket: &PathBuf,
    sort: &str,
    first: Vec<serde_json::Value>,
) -> Result<()> {
    let mut view = View {
        sort: sort.to_string(),
        rows: Vec::new(),
        status: String::new(),
        last: HashMap::new(),
    };
    view.update(first);
    let mut next = Instant::now() + REFRESH;
    loop {
        terminal
            .draw(|f| draw(f, &view, socket))
            .context("cannot draw")?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).context("cannot read the terminal")? {
            if let Event::Key(k) = event::read().context("cannot read the terminal")? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let sort = match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Char('c') => "cpu",
                    KeyCode::Char('m') => "mem",
                    KeyCode::Char('r') => "restarts",
                    KeyCode::Char('n') => "name",
                    _ => continue,
                };
                view.sort = sort.to_string();
                // sorted now, with the figures of the last look
                next = Instant::now();
            }
            continue;
        }
        match crate::ctl::list(socket) {
            Ok(vs) => view.update(vs),
            Err(e) => view.status = format!("cannot read the emperor: {}", crate::error_chain(&e)),
        }
        next = Instant::now() + REFRESH;
    }
}

fn draw(f: &mut ratatui::Frame<'_>, view: &View, socket: &std::path::Path) {
    let [top, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(f.area());
    f.render_widget(
        Line::from(format!(
            " imperium ctl top · {} · {} · sort: {} · c cpu  m mem  r restarts  n name  q quit",
            socket.display(),
            view.status,
            view.sort
        ))
        .reversed(),
        top,
    );
    let Some((head, rows)) = view.rows.split_first() else {
        return;
    };
    let widths: Vec<Constraint> = (0..head.len())
        .map(|i| {
            let w = view
                .rows
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0);
            Constraint::Length(w as u16)
        })
        .collect();
    let table = Table::new(rows.iter().map(|r| Row::new(r.clone())), widths)
        .header(Row::new(head.clone()).style(Style::new().bold()))
        .column_spacing(2);
    f.render_widget(table, body);
}
