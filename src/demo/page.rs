//! The demo as a page: a small form for the parameters, the headline, and the
//! run drawn as a timeline, one bar per request (waiting for a permit, then
//! holding it while the upstream answers), plus the number of calls in flight
//! over time against the limit.
//!
//! Everything is generated here as one HTML document with inline SVG and CSS:
//! no scripts, nothing fetched from elsewhere, so the page works offline and
//! under a strict Content-Security-Policy.

use std::fmt::Write;

use super::{DemoBounds, DemoReport, MAX_LIMIT, RequestResult};

/// The form's current values, echoed back so a run can be tweaked and repeated.
#[derive(Debug, Clone, Default)]
pub struct FormValues {
    pub requests: u64,
    pub limit: u64,
    pub delay_ms: u64,
    pub url: String,
    /// The server's bounds, for the inputs' `max`.
    pub bounds: DemoBounds,
}

/// Where the page was served from (`http://host:port`, from the `Host`
/// header), so the curl hint under the picture can be pasted as it is.
#[derive(Debug, Clone, Default)]
pub struct Origin(pub String);

const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 72.0;
const TOP: f64 = 28.0;
const ROW: f64 = 20.0;
const BAR: f64 = 14.0;
const PLOT: f64 = WIDTH - LEFT - RIGHT;

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1000px;padding:0 1rem;color:#1d232a}
h1{font-size:1.4rem;margin:0 0 .25rem}
.summary{font-size:1.15rem;margin:.5rem 0 1rem;font-family:ui-monospace,monospace}
form{display:flex;flex-wrap:wrap;gap:.75rem 1rem;align-items:end;background:#f3f5f7;padding:.75rem 1rem;border-radius:6px}
label{display:flex;flex-direction:column;font-size:.85rem;color:#4a5561}
input{font:inherit;padding:.2rem .4rem;width:6rem}
input[name=url]{width:22rem}
button{font:inherit;padding:.3rem 1rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;margin:1rem 0}
dt{color:#4a5561}dd{margin:0;font-family:ui-monospace,monospace}
svg{display:block;margin:.5rem 0 1.5rem;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#4a5561}
.wait{fill:#f2b134}.hold{fill:#2f6fb3}.failed{fill:#c0392b}
.legend .wait{background:#f2b134}.legend .hold{background:#2f6fb3}.legend .failed{background:#c0392b}
.grid{stroke:#dde2e7}.ideal{stroke:#1d232a;stroke-dasharray:4 3}
.limit{stroke:#c0392b;stroke-dasharray:4 3}.inflight{fill:#2f6fb3;fill-opacity:.25;stroke:#2f6fb3}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:-.1em}
code{background:#f3f5f7;padding:.1rem .3rem;border-radius:3px}
";

/// The whole page for one report.
pub fn render(report: &DemoReport, form: &FormValues, origin: &Origin) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>permitd demo: {requests} requests, limit {limit}</title>\
         <style>{STYLE}</style></head><body>\
         <h1>permitd demo: {requests} requests through a semaphore of limit {limit}</h1>\
         <p class=\"summary\" id=\"summary\">{summary}</p>",
        requests = report.requests,
        limit = report.limit,
        summary = escape(&report.summary),
    );
    html.push_str(&render_form(form));
    let _ = write!(
        html,
        "<dl>\
         <dt>total</dt><dd>{total:.4} s</dd>\
         <dt>ideal</dt><dd>{ideal:.4} s (ceil(requests / limit) × delay)</dd>\
         <dt>most in flight</dt><dd id=\"max-concurrency\">{max} (limit {limit})</dd>\
         <dt>store</dt><dd>{store}</dd>\
         <dt>url</dt><dd>{url}</dd>\
         </dl>",
        total = report.total_seconds,
        ideal = report.ideal_seconds,
        max = report.max_concurrency,
        limit = report.limit,
        store = report.store,
        url = escape(&report.url),
    );
    html.push_str(
        "<p class=\"legend\">Each bar is one request:<span class=\"wait\"></span>waiting for a \
         permit<span class=\"hold\"></span>holding it while the upstream answers\
         <span class=\"failed\"></span>no answer. The dashed line is the ideal time.</p>",
    );
    html.push_str(&timeline(report));
    html.push_str("<p>Calls in flight over time; the dashed red line is the limit.</p>");
    html.push_str(&in_flight_chart(report));
    let _ = writeln!(
        html,
        "<p>The same report as JSON: <code>curl -s '{query}'</code>. From the terminal: \
         <code>permitd demo --requests {r} --limit {l}</code>.</p></body></html>",
        query = escape(&format!("{}{}", origin.0, query_string(form))),
        r = form.requests,
        l = form.limit,
    );
    html
}

fn render_form(form: &FormValues) -> String {
    format!(
        "<form method=\"get\" action=\"/demo\">\
         <label>requests<input type=\"number\" name=\"requests\" min=\"1\" max=\"{max_requests}\" value=\"{r}\"></label>\
         <label>limit<input type=\"number\" name=\"limit\" min=\"1\" max=\"{MAX_LIMIT}\" value=\"{l}\"></label>\
         <label>delay_ms (built-in upstream)<input type=\"number\" name=\"delay_ms\" min=\"0\" max=\"{max_delay_ms}\" value=\"{d}\"></label>\
         <label>url (empty: built-in upstream)<input type=\"url\" name=\"url\" value=\"{u}\" placeholder=\"built-in upstream\"></label>\
         <button type=\"submit\">Run</button></form>",
        r = form.requests,
        l = form.limit,
        d = form.delay_ms,
        u = escape(&form.url),
        max_requests = form.bounds.max_requests,
        max_delay_ms = form.bounds.max_delay_ms,
    )
}

fn query_string(form: &FormValues) -> String {
    let mut query = format!(
        "/demo?requests={}&limit={}&delay_ms={}",
        form.requests, form.limit, form.delay_ms
    );
    if !form.url.is_empty() {
        query.push_str("&url=");
        for byte in form.url.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                query.push(byte as char);
            } else {
                let _ = write!(query, "%{byte:02X}");
            }
        }
    }
    query
}

/// The span the x axis covers, in ms: the run or the ideal, whichever is longer.
fn span_ms(report: &DemoReport) -> f64 {
    let last_end = report.results.iter().map(|r| r.end_ms).fold(0.0, f64::max);
    (report.total_seconds * 1000.0)
        .max(report.ideal_seconds * 1000.0)
        .max(last_end)
        .max(1.0)
}

fn x(ms: f64, span: f64) -> f64 {
    LEFT + ms / span * PLOT
}

/// A round tick step giving at most about ten ticks over `span` ms.
fn tick_step(span: f64) -> f64 {
    let raw = span / 10.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn axis(svg: &mut String, span: f64, bottom: f64) {
    let step = tick_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let px = x(t, span);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{bottom:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{label:.1}\" text-anchor=\"middle\">{t} ms</text>",
            top = TOP - 6.0,
            label = TOP - 10.0,
        );
        t += step;
    }
}

/// One row per request: a `wait` rect from 0 to the grant, a `hold` rect from
/// the call's start to its end. Each row is a `<g class="bar">` with
/// `data-index` and `data-status`, so a test (or a curious user) can count them.
fn timeline(report: &DemoReport) -> String {
    let span = span_ms(report);
    let height = TOP + ROW * report.results.len() as f64 + 8.0;
    let mut svg = format!(
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-label=\"timeline of {n} requests\">",
        n = report.results.len()
    );
    axis(&mut svg, span, height - 4.0);
    for (row, result) in report.results.iter().enumerate() {
        svg.push_str(&bar(result, TOP + ROW * row as f64, span));
    }
    let ideal = x(report.ideal_seconds * 1000.0, span);
    let _ = write!(
        svg,
        "<line class=\"ideal\" x1=\"{ideal:.1}\" y1=\"{top:.1}\" x2=\"{ideal:.1}\" y2=\"{bottom:.1}\">\
         <title>ideal: {secs:.4} s</title></line></svg>",
        top = TOP - 6.0,
        bottom = height - 4.0,
        secs = report.ideal_seconds,
    );
    svg
}

fn bar(result: &RequestResult, y: f64, span: f64) -> String {
    let status = result
        .status
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    let hold_class = if result.status.is_some() {
        "hold"
    } else {
        "failed"
    };
    let wait_w = (x(result.wait_ms, span) - LEFT).max(0.0);
    let hold_x = x(result.start_ms, span);
    // At least a sliver, so a 0 ms call is still visible.
    let hold_w = (x(result.end_ms, span) - hold_x).max(1.5);
    let label = match (&result.status, &result.error) {
        (Some(code), _) => code.to_string(),
        (None, Some(error)) => escape(error),
        (None, None) => "failed".to_owned(),
    };
    format!(
        "<g class=\"bar\" data-index=\"{i}\" data-status=\"{status}\">\
         <title>№{i}: waited {w:.1} ms, held {h:.1} ms, status {status}</title>\
         <text x=\"{lx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">№{i}</text>\
         <rect class=\"wait\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{wait_w:.1}\" height=\"{BAR}\"/>\
         <rect class=\"{hold_class}\" x=\"{hold_x:.1}\" y=\"{y:.1}\" width=\"{hold_w:.1}\" height=\"{BAR}\"/>\
         <text x=\"{sx:.1}\" y=\"{ty:.1}\">{label}</text></g>",
        i = result.index,
        w = result.wait_ms,
        h = result.end_ms - result.start_ms,
        lx = LEFT - 6.0,
        ty = y + BAR - 3.0,
        sx = hold_x + hold_w + 4.0,
    )
}

/// Calls in flight over time, a step line drawn from the recorded intervals,
/// with the limit as a dashed line: the picture of `max_concurrency <= limit`.
fn in_flight_chart(report: &DemoReport) -> String {
    let span = span_ms(report);
    let chart_h = 90.0;
    let height = TOP + chart_h + 10.0;
    let top_count = f64::from(report.limit.max(report.max_concurrency).max(1));
    let y = |count: f64| TOP + chart_h - count / top_count * chart_h;
    let mut events: Vec<(f64, i32)> = report
        .results
        .iter()
        .filter(|r| r.end_ms > r.start_ms || r.status.is_some())
        .flat_map(|r| [(r.start_ms, 1), (r.end_ms, -1)])
        .collect();
    // Ends before starts at the same instant: a hand-over is not an overlap.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut points = format!("{LEFT:.1},{:.1}", y(0.0));
    let mut count = 0;
    for (at, delta) in events {
        let px = x(at, span);
        let _ = write!(points, " {px:.1},{:.1}", y(f64::from(count)));
        count += delta;
        let _ = write!(points, " {px:.1},{:.1}", y(f64::from(count)));
    }
    let _ = write!(points, " {:.1},{:.1}", x(span, span), y(0.0));
    let limit_y = y(f64::from(report.limit));
    let mut svg = format!(
        "<svg id=\"in-flight\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-label=\"calls in flight over time\">"
    );
    axis(&mut svg, span, TOP + chart_h);
    let _ = write!(
        svg,
        "<polygon class=\"inflight\" points=\"{points}\"/>\
         <line class=\"limit\" x1=\"{LEFT}\" y1=\"{limit_y:.1}\" x2=\"{right:.1}\" y2=\"{limit_y:.1}\"/>\
         <text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\">limit {limit}</text>\
         <text x=\"{lx:.1}\" y=\"{zy:.1}\" text-anchor=\"end\">0</text></svg>",
        right = WIDTH - RIGHT,
        lx = LEFT - 6.0,
        ly = limit_y + 4.0,
        zy = y(0.0),
        limit = report.limit,
    );
    svg
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DemoReport {
        let results = (1..=3)
            .map(|i| RequestResult {
                index: i,
                status: (i != 3).then_some(200),
                wait_ms: f64::from(i - 1) * 100.0,
                start_ms: f64::from(i - 1) * 100.0,
                end_ms: f64::from(i) * 100.0,
                error: (i == 3).then(|| "timeout".to_owned()),
            })
            .collect();
        DemoReport {
            requests: 3,
            limit: 1,
            total_seconds: 0.3,
            ideal_seconds: 0.3,
            max_concurrency: 1,
            summary: "takes ~0.3000 seconds to handle 3 with 1 bounded limit".into(),
            url: "http://h/?a=<b>".into(),
            store: "memory",
            semaphore: "demo-x".into(),
            results,
        }
    }

    #[test]
    fn the_page_has_one_bar_per_request_and_no_script() {
        let html = render(&report(), &FormValues::default(), &Origin::default());
        assert_eq!(html.matches("<g class=\"bar\"").count(), 3);
        assert!(!html.contains("<script"));
        assert!(html.contains("data-status=\"none\""));
        assert!(html.contains("http://h/?a=&lt;b&gt;"), "the url is escaped");
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(500.0), 50.0);
        assert_eq!(tick_step(120.0), 20.0);
        assert_eq!(tick_step(3_000.0), 500.0);
    }

    #[test]
    fn the_json_hint_encodes_the_url() {
        let form = FormValues {
            requests: 2,
            limit: 1,
            delay_ms: 0,
            url: "http://a/b?c=d&e".into(),
            ..FormValues::default()
        };
        assert_eq!(
            query_string(&form),
            "/demo?requests=2&limit=1&delay_ms=0&url=http%3A%2F%2Fa%2Fb%3Fc%3Dd%26e"
        );
    }
}
