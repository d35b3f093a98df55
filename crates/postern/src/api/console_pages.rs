//! The console's sections beyond the dashboard: users (and one user's credentials, sign-ins and
//! timeline), domains and the DNS records to publish, applications, bans, the audit log (with
//! filters and a CSV export), the outbound queue, the secrets' metadata, and administrators.
//!
//! Every page is built from the JSON the admin API's own handlers return for the signed-in
//! caller, and every button posts to `/admin/do`, which calls the same handler as the matching
//! API request. So the role and domain checks, the operations and their audit events are the
//! API's (and the CLI's) and not a second copy: a page a role may not read answers 403 with the
//! API's refusal, whatever link led there. One template (`admin/page.html`) draws them all.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::Form;

use super::common::*;
use super::console::{caller, csrf_of, Frame};
use super::html::{page, redirect};

pub(super) struct Cell {
    text: String,
    href: Option<String>,
}

/// A button of a table row: a form posting `op` with hidden fields and, optionally, one input
/// (name, label, type, required).
pub(super) struct Act {
    op: &'static str,
    label: &'static str,
    aria: String,
    danger: bool,
    fields: Vec<(&'static str, String)>,
    input: Option<(&'static str, &'static str, &'static str, bool)>,
}

pub(super) struct Row {
    cells: Vec<Cell>,
    acts: Vec<Act>,
}

pub(super) struct Table {
    id: &'static str,
    title: String,
    head: Vec<&'static str>,
    rows: Vec<Row>,
    actions: bool,
    empty: &'static str,
}

pub(super) struct Field {
    name: &'static str,
    label: &'static str,
    /// An input type, or "select".
    kind: &'static str,
    required: bool,
    options: Vec<(String, String)>,
    value: String,
    hint: &'static str,
}

pub(super) struct FormSpec {
    id: &'static str,
    legend: &'static str,
    method: &'static str,
    action: &'static str,
    op: &'static str,
    hidden: Vec<(&'static str, String)>,
    fields: Vec<Field>,
    submit: &'static str,
}

#[derive(Template)]
#[template(path = "admin/page.html")]
struct Page {
    f: Frame,
    title: String,
    intro: String,
    shown_once: Option<(String, String)>,
    tables: Vec<Table>,
    notes: Vec<String>,
    forms: Vec<FormSpec>,
    /// (href, text, id)
    links: Vec<(String, String, String)>,
    /// The page a form's result is shown on (a section name and its parameter).
    back: String,
}

fn field(name: &'static str, label: &'static str, kind: &'static str) -> Field {
    Field {
        name,
        label,
        kind,
        required: true,
        options: Vec::new(),
        value: String::new(),
        hint: "",
    }
}

fn optional(mut f: Field, hint: &'static str) -> Field {
    f.required = false;
    f.hint = hint;
    f
}

fn act(op: &'static str, label: &'static str, aria: String) -> Act {
    Act {
        op,
        label,
        aria,
        danger: false,
        fields: Vec::new(),
        input: None,
    }
}

fn danger(mut a: Act) -> Act {
    a.danger = true;
    a
}

fn with(mut a: Act, name: &'static str, value: &str) -> Act {
    a.fields.push((name, value.to_owned()));
    a
}

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// One JSON field as a table cell's text: times as dates (UTC), lists joined, nothing as a dash.
fn text(v: &Value, key: &str) -> String {
    let is_time = key.ends_with("_at")
        || key.ends_with("_until")
        || matches!(key, "ts" | "until" | "first_seen" | "last_seen");
    match &v[key] {
        Value::Null => "—".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) if is_time => n.as_i64().map(date).unwrap_or_default(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "—".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn cells(v: &Value, keys: &[&str]) -> Vec<Cell> {
    keys.iter()
        .map(|k| Cell {
            text: text(v, k),
            href: None,
        })
        .collect()
}

fn table(id: &'static str, title: &str, head: Vec<&'static str>, empty: &'static str) -> Table {
    Table {
        id,
        title: title.to_owned(),
        head,
        rows: Vec::new(),
        actions: false,
        empty,
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A section's content: what [`render`] fills in for one page.
struct Content {
    title: String,
    intro: String,
    tables: Vec<Table>,
    notes: Vec<String>,
    forms: Vec<FormSpec>,
    links: Vec<(String, String, String)>,
}

impl Content {
    fn new(title: &str) -> Content {
        Content {
            title: title.to_owned(),
            intro: String::new(),
            tables: Vec::new(),
            notes: Vec::new(),
            forms: Vec::new(),
            links: Vec::new(),
        }
    }
}

type Q = HashMap<String, String>;

fn q<'a>(p: &'a Q, k: &str) -> &'a str {
    p.get(k).map_or("", |s| s.trim())
}

async fn users(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::users::list_users(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Users");
    let mut t = table(
        "users",
        "Mail accounts",
        vec![
            "Address",
            "Disabled",
            "Second factor",
            "Locked out",
            "Password changed",
        ],
        "No account yet.",
    );
    t.actions = true;
    for u in list.as_array().into_iter().flatten() {
        let a = text(u, "address");
        let mut cs = cells(
            u,
            &[
                "address",
                "disabled",
                "two_factor",
                "locked",
                "password_changed_at",
            ],
        );
        cs[0].href = Some(format!("/admin/user?address={}", enc(&a)));
        let mut acts = Vec::new();
        if c.may(Perm::ManageUsers).is_ok() {
            acts.push(if u["disabled"] == true {
                with(
                    act("user.enable", "Enable", format!("Enable {a}")),
                    "address",
                    &a,
                )
            } else {
                with(
                    act("user.disable", "Disable", format!("Disable {a}")),
                    "address",
                    &a,
                )
            });
        }
        if c.may(Perm::ResetCredentials).is_ok() {
            if u["locked"] == true {
                acts.push(with(
                    act("user.unlock", "Unlock", format!("Lift the lockout of {a}")),
                    "address",
                    &a,
                ));
            }
            if u["two_factor"] == true {
                acts.push(with(
                    act(
                        "user.reset-2fa",
                        "Reset 2FA",
                        format!("Reset the second factor of {a}"),
                    ),
                    "address",
                    &a,
                ));
            }
        }
        if c.may(Perm::LockAccounts).is_ok() {
            acts.push(danger(with(
                act(
                    "user.lock",
                    "Incident lock",
                    format!("Incident lock of {a}"),
                ),
                "address",
                &a,
            )));
        }
        t.rows.push(Row { cells: cs, acts });
    }
    out.tables.push(t);
    if c.may(Perm::ManageUsers).is_ok() {
        out.forms.push(FormSpec {
            id: "new-user",
            legend: "Create an account",
            method: "post",
            action: "/admin/do",
            op: "user.create",
            hidden: Vec::new(),
            fields: vec![
                field("address", "Address", "email"),
                optional(
                    field("password", "Password", "password"),
                    "Leave empty to have the server generate one (shown once). \
                     The server's password policy applies either way.",
                ),
            ],
            submit: "Create",
        });
    }
    Ok(out)
}

async fn user(st: &Arc<ApiState>, c: &Caller, address: &str) -> ApiResult<Content> {
    let s = || State(st.clone());
    let seg = || Seg(address.to_owned());
    let u = super::users::get_user(s(), c.clone(), seg()).await?.0;
    let a = text(&u, "address");
    let mut out = Content::new(&a);
    out.intro = format!(
        "Created {}; password changed {}; disabled: {}; second factor: {}; locked out: {}.",
        text(&u, "created_at"),
        text(&u, "password_changed_at"),
        text(&u, "disabled"),
        text(&u, "two_factor"),
        text(&u, "locked"),
    );
    if c.may(Perm::ReadCredentials).is_ok() {
        let list = super::app_passwords::list_app_passwords(s(), c.clone(), seg())
            .await?
            .0;
        let keys = [
            "name",
            "protocols",
            "networks",
            "expires_at",
            "last_used_at",
            "last_used_ip",
        ];
        let mut t = table(
            "app-passwords",
            "App passwords",
            vec![
                "Name",
                "Protocols",
                "Networks",
                "Expires",
                "Last used",
                "From",
            ],
            "No app password.",
        );
        t.actions = c.may(Perm::RevokeAppPasswords).is_ok();
        for p in list.as_array().into_iter().flatten() {
            let name = text(p, "name");
            let acts = if t.actions {
                vec![with(
                    with(
                        danger(act(
                            "apppw.revoke",
                            "Revoke",
                            format!("Revoke app password {name}"),
                        )),
                        "address",
                        &a,
                    ),
                    "name",
                    &name,
                )]
            } else {
                Vec::new()
            };
            t.rows.push(Row {
                cells: cells(p, &keys),
                acts,
            });
        }
        out.tables.push(t);
        let signins = super::app_passwords::list_signins(s(), c.clone(), seg())
            .await?
            .0;
        let mut t = table(
            "signins",
            "Where it signs in from",
            vec!["Network", "Client", "First seen", "Last seen"],
            "No sign-in yet.",
        );
        for r in signins.as_array().into_iter().flatten() {
            t.rows.push(Row {
                cells: cells(r, &["network", "client", "first_seen", "last_seen"]),
                acts: Vec::new(),
            });
        }
        out.tables.push(t);
        let params = serde_json::from_value(json!({"since_secs": 30 * 86400}))
            .map_err(|_| ApiError::Internal)?;
        let events = super::users::timeline(s(), c.clone(), seg(), Params(params))
            .await?
            .0;
        let mut t = table(
            "timeline",
            "The last 30 days (newest first)",
            vec!["When", "Event", "Door", "Source", "Result", "Why", "By"],
            "Nothing in the last 30 days.",
        );
        for e in events.as_array().into_iter().flatten().rev().take(200) {
            t.rows.push(Row {
                cells: cells(
                    e,
                    &["ts", "event", "protocol", "ip", "result", "reason", "actor"],
                ),
                acts: Vec::new(),
            });
        }
        out.tables.push(t);
    }
    let hidden = vec![("address", a.clone())];
    if c.may(Perm::ResetCredentials).is_ok() {
        out.forms.push(FormSpec {
            id: "set-password",
            legend: "Set a new password",
            method: "post",
            action: "/admin/do",
            op: "user.password",
            hidden: hidden.clone(),
            fields: vec![optional(
                field("password", "New password", "password"),
                "Leave empty to have the server generate one (shown once).",
            )],
            submit: "Set the password",
        });
    }
    if c.may(Perm::IssueSecrets).is_ok() {
        out.forms.push(FormSpec {
            id: "new-app-password",
            legend: "Create an app password",
            method: "post",
            action: "/admin/do",
            op: "apppw.create",
            hidden: hidden.clone(),
            fields: vec![field("name", "Name (the device or program)", "text")],
            submit: "Create (shown once)",
        });
    }
    if c.may(Perm::UnlockAccounts).is_ok() {
        out.forms.push(FormSpec {
            id: "incident-unlock",
            legend: "Lift an incident lock",
            method: "post",
            action: "/admin/do",
            op: "user.incident-unlock",
            hidden,
            fields: vec![field("password", "New password (required)", "password")],
            submit: "Lift the lock",
        });
    }
    Ok(out)
}

async fn domains(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::domains::list_domains(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Domains");
    let mut t = table(
        "domains",
        "Local domains",
        vec!["Domain", "Accounts", "DNS"],
        "No domain yet.",
    );
    t.actions = c.may(Perm::ManageDomains).is_ok();
    for d in list.as_array().into_iter().flatten() {
        let name = text(d, "name");
        let mut cs = cells(d, &["name", "accounts"]);
        cs.push(Cell {
            text: "Records to publish".into(),
            href: Some(format!("/admin/dns?domain={}", enc(&name))),
        });
        let acts = if t.actions {
            vec![danger(with(
                act("domain.remove", "Remove", format!("Remove domain {name}")),
                "name",
                &name,
            ))]
        } else {
            Vec::new()
        };
        t.rows.push(Row { cells: cs, acts });
    }
    out.tables.push(t);
    if c.may(Perm::ManageDomains).is_ok() {
        out.forms.push(FormSpec {
            id: "new-domain",
            legend: "Add a domain",
            method: "post",
            action: "/admin/do",
            op: "domain.add",
            hidden: Vec::new(),
            fields: vec![field("name", "Domain", "text")],
            submit: "Add",
        });
    }
    Ok(out)
}

async fn dns(st: &Arc<ApiState>, c: &Caller, domain: &str) -> ApiResult<Content> {
    let v = super::domains::dns_records(State(st.clone()), c.clone(), Seg(domain.to_owned()))
        .await?
        .0;
    let mut out = Content::new(&format!("DNS records for {domain}"));
    out.intro = "Publish these at the domain's DNS provider; `postern audit` checks them.".into();
    let mut t = table(
        "dns",
        "Records",
        vec!["Name", "Type", "Value"],
        "No record.",
    );
    for r in v["records"].as_array().into_iter().flatten() {
        t.rows.push(Row {
            cells: cells(r, &["name", "type", "value"]),
            acts: Vec::new(),
        });
    }
    out.tables.push(t);
    out.notes = v["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    Ok(out)
}

async fn applications(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::applications::list_applications(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Applications");
    out.intro = "Per-application SMTP credentials: who they may send as, from where, how much. \
                 Create them with `postern app create` or POST /api/v1/applications."
        .into();
    let keys = [
        "name",
        "allow_from",
        "networks",
        "expires_at",
        "rotated_at",
        "previous_secret_valid_until",
        "last_used_at",
        "last_used_ip",
    ];
    let mut t = table(
        "applications",
        "Application credentials",
        vec![
            "Name",
            "May send as",
            "Networks",
            "Expires",
            "Rotated",
            "Old secret valid until",
            "Last used",
            "From",
        ],
        "No application.",
    );
    t.actions = c.may(Perm::IssueSecrets).is_ok();
    for a in list.as_array().into_iter().flatten() {
        let name = text(a, "name");
        let acts = if t.actions {
            vec![
                with(
                    act(
                        "app.rotate",
                        "Rotate",
                        format!("Rotate the secret of {name}"),
                    ),
                    "name",
                    &name,
                ),
                danger(with(
                    act("app.remove", "Remove", format!("Remove application {name}")),
                    "name",
                    &name,
                )),
            ]
        } else {
            Vec::new()
        };
        t.rows.push(Row {
            cells: cells(a, &keys),
            acts,
        });
    }
    out.tables.push(t);
    Ok(out)
}

async fn bans(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::bans::list_bans(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Bans");
    let mut t = table(
        "bans",
        "Active bans",
        vec!["Source", "Until (UTC)", "Why", "Offences"],
        "No source is banned.",
    );
    t.actions = c.may(Perm::ManageBans).is_ok();
    for b in list.as_array().into_iter().flatten() {
        let target = text(b, "target");
        let acts = if t.actions {
            vec![danger(with(
                act("ban.lift", "Lift", format!("Lift the ban on {target}")),
                "target",
                &target,
            ))]
        } else {
            Vec::new()
        };
        t.rows.push(Row {
            cells: cells(b, &["target", "until", "reason", "offences"]),
            acts,
        });
    }
    out.tables.push(t);
    if c.may(Perm::ManageBans).is_ok() {
        let mut hours = field("hours", "For how many hours", "number");
        hours.value = "24".into();
        out.forms.push(FormSpec {
            id: "new-ban",
            legend: "Ban an address or network",
            method: "post",
            action: "/admin/do",
            op: "ban.add",
            hidden: Vec::new(),
            fields: vec![
                field("target", "Address or network (CIDR)", "text"),
                hours,
                optional(field("reason", "Why", "text"), ""),
            ],
            submit: "Ban",
        });
    }
    Ok(out)
}

/// The audit log query of the page's filters (the API's parameters; `hours` back from now).
fn audit_params(p: &Q) -> ApiResult<Params<super::audit::AuditParams>> {
    let mut v = serde_json::Map::new();
    for k in ["account", "ip"] {
        if !q(p, k).is_empty() {
            v.insert(k.into(), json!(q(p, k)));
        }
    }
    if matches!(q(p, "result"), "ok" | "failed") {
        v.insert("result".into(), json!(q(p, "result")));
    }
    if let Ok(h) = q(p, "hours").parse::<i64>() {
        v.insert(
            "since".into(),
            json!(postern_store::now() - h.clamp(1, 24 * 366) * 3600),
        );
    }
    let limit = q(p, "limit").parse::<i64>().unwrap_or(200).clamp(1, 1000);
    v.insert("limit".into(), json!(limit));
    serde_json::from_value(Value::Object(v))
        .map(Params)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

const AUDIT_KEYS: [&str; 10] = [
    "ts",
    "event",
    "protocol",
    "ip",
    "username",
    "mechanism",
    "tls",
    "result",
    "reason",
    "actor",
];

async fn audit(st: &Arc<ApiState>, c: &Caller, p: &Q) -> ApiResult<Content> {
    let rows = super::audit::audit_log(State(st.clone()), c.clone(), audit_params(p)?)
        .await?
        .0;
    let mut out = Content::new("Audit log");
    out.intro = "Append-only and hash-chained (`postern audit-log verify`); newest first.".into();
    let value = |k: &str| q(p, k).to_owned();
    let mut result = field("result", "Result", "select");
    result.options = vec![
        (String::new(), "any".into()),
        ("ok".into(), "succeeded".into()),
        ("failed".into(), "failed".into()),
    ];
    result.value = value("result");
    let mut fields = vec![
        optional(field("account", "Account or name tried", "text"), ""),
        optional(field("ip", "Source address", "text"), ""),
        result,
        optional(field("hours", "Last hours", "number"), ""),
        optional(field("limit", "At most (rows)", "number"), "Up to 1000."),
    ];
    for f in &mut fields {
        if f.kind != "select" {
            f.value = value(f.name);
        }
    }
    out.forms.push(FormSpec {
        id: "audit-filter",
        legend: "Filter",
        method: "get",
        action: "/admin/audit",
        op: "",
        hidden: Vec::new(),
        fields,
        submit: "Show",
    });
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            ["account", "ip", "result", "hours", "limit"]
                .iter()
                .filter(|k| !q(p, k).is_empty())
                .map(|k| (*k, q(p, k))),
        )
        .finish();
    out.links.push((
        format!("/admin/audit.csv?{query}"),
        "Export these rows as CSV".into(),
        "audit-export".into(),
    ));
    let mut t = table(
        "audit",
        "Events",
        vec![
            "When",
            "Event",
            "Door",
            "Source",
            "Name",
            "Mechanism",
            "TLS",
            "Result",
            "Why",
            "By",
        ],
        "No event matches.",
    );
    // the API gives the last rows oldest first; the page shows the newest first
    for r in rows.as_array().into_iter().flatten().rev() {
        t.rows.push(Row {
            cells: cells(r, &AUDIT_KEYS),
            acts: Vec::new(),
        });
    }
    out.tables.push(t);
    Ok(out)
}

/// A CSV field: quoted when needed (RFC 4180), and never starting with a character a
/// spreadsheet would run as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

async fn audit_csv(st: &Arc<ApiState>, c: &Caller, p: &Q) -> ApiResult<Response> {
    let rows = super::audit::audit_log(State(st.clone()), c.clone(), audit_params(p)?)
        .await?
        .0;
    let mut out = String::from(
        "id,time_utc,unix_time,event,protocol,ip,username,mechanism,tls,result,reason,actor\r\n",
    );
    for r in rows.as_array().into_iter().flatten() {
        let mut line = vec![r["id"].to_string(), text(r, "ts"), r["ts"].to_string()];
        line.extend(AUDIT_KEYS[1..].iter().map(|k| match &r[*k] {
            Value::Null => String::new(),
            _ => text(r, k),
        }));
        let line: Vec<String> = line.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"postern-audit.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

async fn queue(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::queue::list_queue(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Outbound queue");
    let mut t = table(
        "queue",
        "Queued messages",
        vec![
            "Id",
            "Queued",
            "State",
            "Attempts",
            "Size",
            "Sender",
            "Recipients",
        ],
        "The queue is empty.",
    );
    t.actions = c.may(Perm::ManageQueue).is_ok();
    for m in list.as_array().into_iter().flatten() {
        let id = m["id"].to_string();
        let mut acts = Vec::new();
        if t.actions {
            acts.push(with(
                act(
                    "queue.retry",
                    "Retry now",
                    format!("Retry message {id} now"),
                ),
                "id",
                &id,
            ));
            acts.push(if m["status"] == "held" {
                with(
                    act("queue.release", "Release", format!("Release message {id}")),
                    "id",
                    &id,
                )
            } else {
                with(
                    act("queue.hold", "Hold", format!("Hold message {id}")),
                    "id",
                    &id,
                )
            });
            acts.push(danger(with(
                act("queue.remove", "Remove", format!("Remove message {id}")),
                "id",
                &id,
            )));
        }
        t.rows.push(Row {
            cells: cells(
                m,
                &[
                    "id",
                    "created_at",
                    "status",
                    "attempts",
                    "size",
                    "sender",
                    "recipients",
                ],
            ),
            acts,
        });
    }
    out.tables.push(t);
    Ok(out)
}

async fn secrets(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::queue::list_secrets(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Secrets");
    out.intro = "Names and metadata only: values are sealed under the master key and never shown \
                 here. Set them with `postern secret set NAME` (value on stdin)."
        .into();
    let mut t = table(
        "secrets",
        "Stored secrets",
        vec!["Name", "What for", "Sealed under", "Created", "Updated"],
        "No secret stored.",
    );
    for s in list.as_array().into_iter().flatten() {
        t.rows.push(Row {
            cells: cells(
                s,
                &["name", "description", "key_id", "created_at", "updated_at"],
            ),
            acts: Vec::new(),
        });
    }
    out.tables.push(t);
    Ok(out)
}

async fn admins(st: &Arc<ApiState>, c: &Caller) -> ApiResult<Content> {
    let list = super::admins::list_admins(State(st.clone()), c.clone())
        .await?
        .0;
    let mut out = Content::new("Administrators");
    let mut t = table(
        "admins",
        "Administrators",
        vec!["Name", "Role", "Domains", "Disabled", "Created", "By"],
        "No administrator.",
    );
    t.actions = true;
    for a in list.as_array().into_iter().flatten() {
        let name = text(a, "name");
        let acts = if name == c.actor.name {
            Vec::new()
        } else {
            vec![danger(with(
                act(
                    "admin.remove",
                    "Remove",
                    format!("Remove administrator {name}"),
                ),
                "name",
                &name,
            ))]
        };
        t.rows.push(Row {
            cells: cells(
                a,
                &[
                    "name",
                    "role",
                    "domains",
                    "disabled",
                    "created_at",
                    "created_by",
                ],
            ),
            acts,
        });
    }
    out.tables.push(t);
    let mut role = field("role", "Role", "select");
    role.options = crate::roles::Role::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), r.as_str().to_owned()))
        .collect();
    role.value = "helpdesk".into();
    out.forms.push(FormSpec {
        id: "new-admin",
        legend: "Add an administrator",
        method: "post",
        action: "/admin/do",
        op: "admin.add",
        hidden: Vec::new(),
        fields: vec![
            field("name", "Name", "text"),
            role,
            optional(
                field("domains", "Domains (domain-admin only)", "text"),
                "Comma-separated.",
            ),
        ],
        submit: "Add (password shown once; TOTP enrolled at first sign-in)",
    });
    Ok(out)
}

/// Renders section `section` (with its parameters) for the caller, or the API's refusal.
async fn render(
    st: &Arc<ApiState>,
    c: &Caller,
    token: &str,
    section: &str,
    p: &Q,
    notice: Option<(String, bool)>,
    shown_once: Option<(String, String)>,
) -> ApiResult<Response> {
    let (content, nav, back) = match section {
        "users" => (users(st, c).await, "/admin/users", "users".to_owned()),
        "user" => (
            user(st, c, q(p, "address")).await,
            "/admin/users",
            format!("user?address={}", enc(q(p, "address"))),
        ),
        "domains" => (domains(st, c).await, "/admin/domains", "domains".into()),
        "dns" => (
            dns(st, c, q(p, "domain")).await,
            "/admin/domains",
            "domains".into(),
        ),
        "applications" => (
            applications(st, c).await,
            "/admin/applications",
            "applications".into(),
        ),
        "bans" => (bans(st, c).await, "/admin/bans", "bans".into()),
        "audit" => (audit(st, c, p).await, "/admin/audit", "audit".into()),
        "queue" => (queue(st, c).await, "/admin/queue", "queue".into()),
        "secrets" => (secrets(st, c).await, "/admin/secrets", "secrets".into()),
        "admins" => (admins(st, c).await, "/admin/admins", "admins".into()),
        _ => return Err(ApiError::NotFound("no such page".into())),
    };
    let mut f = Frame::new(c, token, nav);
    let (content, status) = match content {
        Ok(x) => (x, StatusCode::OK),
        Err(e) => {
            let (status, msg) = e.client_message();
            f.notice = Some(msg);
            f.failed = true;
            (Content::new("Not available"), status)
        }
    };
    if let Some((m, failed)) = notice {
        f.notice = Some(m);
        f.failed = failed;
    }
    Ok(page(
        Page {
            f,
            title: content.title,
            intro: content.intro,
            shown_once,
            tables: content.tables,
            notes: content.notes,
            forms: content.forms,
            links: content.links,
            back,
        },
        status,
    ))
}

pub(super) async fn view(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Path(section): Path<String>,
    Query(p): Query<Q>,
) -> ApiResult<Response> {
    let Some((c, t)) = caller(&st, &headers, addr.ip()).await else {
        return Ok(redirect("/admin/login"));
    };
    if section == "audit.csv" {
        return audit_csv(&st, &c, &p).await;
    }
    render(&st, &c, &t, &section, &p, None, None).await
}

fn body<T: serde::de::DeserializeOwned>(v: Value) -> ApiResult<Body<T>> {
    serde_json::from_value(v)
        .map(Body)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// One action of a console form, through the API handler of the same action. Returns the
/// notice, and a secret to show once when the action made one.
async fn perform(
    st: &Arc<ApiState>,
    c: &Caller,
    f: &Q,
) -> ApiResult<(String, Option<(String, String)>)> {
    let s = || State(st.clone());
    let c = || c.clone();
    let address = || Seg(q(f, "address").to_owned());
    let name = || Seg(q(f, "name").to_owned());
    let a = q(f, "address");
    let n = q(f, "name");
    let password = |k: &str| match q(f, k) {
        "" => Value::Null,
        pw => json!(pw),
    };
    use super::{admins as ad, app_passwords as ap, applications as app, bans as b};
    use super::{domains as d, users as u};
    Ok(match q(f, "op") {
        "user.create" => {
            let v = json!({"address": a, "password": password("password")});
            let r = u::add_user(s(), c(), body(v)?).await?.1 .0;
            let once = r["password"].as_str().map(|p| {
                (
                    format!("The password of {}", r["address"].as_str().unwrap_or("")),
                    p.to_owned(),
                )
            });
            (format!("Account {} created.", text(&r, "address")), once)
        }
        "user.disable" => {
            u::disable_user(s(), c(), address()).await?;
            (format!("{a} is disabled."), None)
        }
        "user.enable" => {
            u::enable_user(s(), c(), address()).await?;
            (format!("{a} is enabled."), None)
        }
        "user.unlock" => {
            let r = u::unlock_user(s(), c(), address()).await?.0;
            if r["was_locked"] == true {
                (format!("The lockout of {a} is lifted."), None)
            } else {
                (format!("{a} was not locked out."), None)
            }
        }
        "user.reset-2fa" => {
            u::reset_2fa(s(), c(), address()).await?;
            (format!("The second factor of {a} is removed."), None)
        }
        "user.lock" => {
            let v = json!({"reason": "incident lock from the console"});
            let r = u::incident_lock(s(), c(), address(), body(v)?).await?.0;
            (
                format!(
                    "{a} is locked: {} app passwords revoked, {} queued messages held; its live sessions end now.",
                    r["app_passwords_revoked"], r["queued_messages_held"]
                ),
                None,
            )
        }
        "user.incident-unlock" => {
            let v = json!({"password": q(f, "password")});
            u::incident_unlock(s(), c(), address(), body(v)?).await?;
            (
                format!("The incident lock of {a} is lifted with the new password."),
                None,
            )
        }
        "user.password" => {
            let v = json!({"password": password("password")});
            let r = u::set_password(s(), c(), address(), body(v)?).await?.0;
            let once = r["password"]
                .as_str()
                .map(|p| (format!("The new password of {a}"), p.to_owned()));
            (format!("The password of {a} is set."), once)
        }
        "apppw.create" => {
            let v = json!({"name": n});
            let r = ap::create_app_password(s(), c(), address(), body(v)?)
                .await?
                .1
                 .0;
            let once = r["secret"]
                .as_str()
                .map(|p| (format!("App password {n} of {a}"), p.to_owned()));
            (format!("App password {n} created."), once)
        }
        "apppw.revoke" => {
            ap::revoke_app_password(s(), c(), Seg2(a.to_owned(), n.to_owned())).await?;
            (format!("App password {n} of {a} is revoked."), None)
        }
        "domain.add" => {
            let _created = d::add_domain(s(), c(), body(json!({"name": n}))?).await?;
            (format!("Domain {n} added."), None)
        }
        "domain.remove" => {
            d::remove_domain(s(), c(), name()).await?;
            (format!("Domain {n} removed."), None)
        }
        "app.rotate" => {
            let r = app::rotate_application(s(), c(), name(), body(json!({}))?)
                .await?
                .0;
            let once = r["secret"]
                .as_str()
                .map(|p| (format!("The new secret of {n}"), p.to_owned()));
            (
                format!(
                    "{n} has a new secret; the old one works until {}.",
                    text(&r, "previous_secret_valid_until")
                ),
                once,
            )
        }
        "app.remove" => {
            app::remove_application(s(), c(), name()).await?;
            (format!("Application {n} removed."), None)
        }
        "ban.add" => {
            let hours = q(f, "hours").parse::<u64>().unwrap_or(24).max(1);
            let mut v = json!({"target": q(f, "target"), "duration_secs": hours * 3600});
            if !q(f, "reason").is_empty() {
                v["reason"] = json!(q(f, "reason"));
            }
            let r = b::add_ban(s(), c(), body(v)?).await?.1 .0;
            (
                format!(
                    "{} is banned until {} UTC.",
                    text(&r, "target"),
                    text(&r, "until")
                ),
                None,
            )
        }
        "ban.lift" => {
            b::lift_ban(s(), c(), body(json!({"target": q(f, "target")}))?).await?;
            (format!("The ban on {} is lifted.", q(f, "target")), None)
        }
        op @ ("queue.retry" | "queue.hold" | "queue.release" | "queue.remove") => {
            let what = &op[6..];
            super::queue::queue_action(st, &c(), q(f, "id"), what).await?;
            let done = match what {
                "retry" => "will be attempted now",
                "hold" => "is held",
                "release" => "is released",
                _ => "is removed",
            };
            (format!("Message {} {done}.", q(f, "id")), None)
        }
        "admin.add" => {
            let domains: Vec<&str> = q(f, "domains")
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect();
            let v = json!({"name": n, "role": q(f, "role"), "domains": domains});
            let r = ad::add_admin(s(), c(), body(v)?).await?.1 .0;
            let once = r["password"]
                .as_str()
                .map(|p| (format!("The first password of {n}"), p.to_owned()));
            (
                format!("Administrator {n} ({}) added.", text(&r, "role")),
                once,
            )
        }
        "admin.remove" => {
            ad::remove_admin(s(), c(), name()).await?;
            (format!("Administrator {n} removed."), None)
        }
        _ => return Err(ApiError::BadRequest("unknown action".into())),
    })
}

pub(super) async fn act_form(
    State(st): St,
    ConnectInfo(PeerAddr(addr)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<Q>,
) -> ApiResult<Response> {
    let Some((c, t)) = caller(&st, &headers, addr.ip()).await else {
        return Ok(redirect("/admin/login"));
    };
    if csrf_of(&t) != q(&f, "csrf") {
        return Err(ApiError::Forbidden);
    }
    let (notice, once) = match perform(&st, &c, &f).await {
        Ok((m, once)) => ((m, false), once),
        Err(e) => ((e.client_message().1, true), None),
    };
    // the page the form was on: a section name and its parameters
    let back = q(&f, "back");
    let (section, query) = back.split_once('?').unwrap_or((back, ""));
    let p: Q = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let section = if section.is_empty() { "users" } else { section };
    render(&st, &c, &t, section, &p, Some(notice), once).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-1+2,x"), "\"'-1+2,x\"");
    }

    #[test]
    fn cells_show_times_lists_and_nothing() {
        let v = json!({"ts": 0, "until": 86400, "protocols": ["imap", "smtp"], "networks": [],
                       "reason": null, "locked": true, "size": 12});
        assert_eq!(text(&v, "ts"), "1970-01-01 00:00");
        assert_eq!(text(&v, "until"), "1970-01-02 00:00");
        assert_eq!(text(&v, "protocols"), "imap, smtp");
        assert_eq!(text(&v, "networks"), "—");
        assert_eq!(text(&v, "reason"), "—");
        assert_eq!(text(&v, "locked"), "yes");
        assert_eq!(text(&v, "size"), "12");
    }
}
