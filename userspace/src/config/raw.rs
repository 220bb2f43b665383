//! The raw document: a tree of values that remembers each value's byte span in the TOML
//! source (JSON values have none), and a table walker that takes typed fields out of it,
//! reporting wrong types and unknown fields (the `deny_unknown_fields` rule) without
//! stopping at the first one.
//!
//! A hand walk instead of `#[derive(Deserialize)]` structs: serde stops at the first
//! error, and the configuration must report all of them with their field paths. TOML and
//! JSON both become this tree, so both go through the same walk and validation.

use std::{fmt, ops::Range};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_spanned::__unstable::{END_FIELD, NAME, START_FIELD, VALUE_FIELD};

use super::error::{At, Ctx, Val};

/// toml's private marker of a date-time value (sent as a one-entry map).
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// Key-value pairs of a table of strings, each with its location.
pub(crate) type Pairs = Vec<(Val<String>, Val<String>)>;

/// A value and its byte span in the source.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub span: Option<Range<usize>>,
}

/// A table key and its byte span.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub span: Option<Range<usize>>,
}

/// The value itself.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Null,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

impl Kind {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Null => "null",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

impl Node {
    /// Parse TOML text. The error is toml's, with its span.
    pub fn from_toml(text: &str) -> Result<Node, toml::de::Error> {
        toml::from_str(text)
    }

    /// Convert a JSON value (no spans).
    pub fn from_json(value: &serde_json::Value) -> Node {
        use serde_json::Value;
        let kind = match value {
            Value::Null => Kind::Null,
            Value::Bool(b) => Kind::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Kind::Int(i),
                None => Kind::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Kind::Str(s.clone()),
            Value::Array(a) => Kind::Array(a.iter().map(Node::from_json).collect()),
            Value::Object(o) => Kind::Table(
                o.iter()
                    .map(|(k, v)| {
                        let key = Key {
                            name: k.clone(),
                            span: None,
                        };
                        (key, Node::from_json(v))
                    })
                    .collect(),
            ),
        };
        Node { kind, span: None }
    }
}

/// Ask for a spanned value; deserializers without spans (toml's date-time and JSON-like
/// ones) answer with the bare value, which is accepted too.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(NAME, &[START_FIELD, END_FIELD, VALUE_FIELD], NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(NAME, &[START_FIELD, END_FIELD, VALUE_FIELD], KeyVisitor)
    }
}

/// Reads `{start, end, value}` of a spanned map whose first key was already read.
fn spanned<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    mut map: A,
) -> Result<(T, Range<usize>), A::Error> {
    let start: usize = map.next_value()?;
    let mut end = start;
    let mut value = None;
    while let Some(k) = map.next_key::<String>()? {
        if k == END_FIELD {
            end = map.next_value()?;
        } else if k == VALUE_FIELD {
            value = Some(map.next_value()?);
        } else {
            return Err(de::Error::custom(format!("unexpected span field {k}")));
        }
    }
    let value = value.ok_or_else(|| de::Error::missing_field(VALUE_FIELD))?;
    Ok((value, start..end))
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_owned(),
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        match map.next_key::<String>()? {
            Some(k) if k == START_FIELD => {
                let (name, span) = spanned::<A, String>(map)?;
                Ok(Key {
                    name,
                    span: Some(span),
                })
            }
            _ => Err(de::Error::custom("expected a table key")),
        }
    }
}

struct NodeVisitor;

fn bare(kind: Kind) -> Node {
    Node { kind, span: None }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(bare(Kind::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Kind::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(bare(
            i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int),
        ))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(bare(Kind::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Kind::Str(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Node, A::Error> {
        KindVisitor.visit_seq(seq).map(bare)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        match map.next_key::<Key>()? {
            Some(k) if k.name == START_FIELD => {
                let (kind, span) = spanned::<A, Kind>(map)?;
                Ok(Node {
                    kind,
                    span: Some(span),
                })
            }
            // Not spanned (the document root): a plain table.
            first => table(first, map).map(bare),
        }
    }
}

/// The rest of a table whose first key (if any) was already read.
fn table<'de, A: MapAccess<'de>>(first: Option<Key>, mut map: A) -> Result<Kind, A::Error> {
    let Some(first) = first else {
        return Ok(Kind::Table(Vec::new()));
    };
    let value: Node = map.next_value()?;
    if first.name == DATETIME_KEY {
        return Ok(match value.kind {
            Kind::Str(s) => Kind::Datetime(s),
            other => other,
        });
    }
    let mut entries = vec![(first, value)];
    while let Some(k) = map.next_key::<Key>()? {
        let v: Node = map.next_value()?;
        entries.push((k, v));
    }
    Ok(Kind::Table(entries))
}

/// The value under a span.
impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Kind::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let first = map.next_key::<Key>()?;
        table(first, map)
    }
}

/// Takes fields out of one table. Every field name asked for is remembered; `finish`
/// reports the table's other keys as unknown, listing the known ones.
pub(crate) struct Table<'n> {
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
    /// The table itself.
    pub at: At,
}

impl<'n> Table<'n> {
    /// The table at `node`, or a problem when it is not a table.
    pub fn new(ctx: &mut Ctx, node: &'n Node, path: String) -> Option<Self> {
        let at = ctx.at(path, node.span.as_ref().or_else(|| inner_span(node)));
        match &node.kind {
            Kind::Table(entries) => Some(Self {
                entries,
                used: vec![false; entries.len()],
                known: Vec::new(),
                at,
            }),
            other => {
                ctx.report(&at, format!("expected a table, found {}", other.describe()));
                None
            }
        }
    }

    /// The raw node of field `name`, with its location.
    pub fn node(&mut self, ctx: &Ctx, name: &'static str) -> Option<(&'n Node, At)> {
        self.known.push(name);
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        self.used[i] = true;
        let (key, node) = &self.entries[i];
        let span = node
            .span
            .as_ref()
            .or(key.span.as_ref())
            .or_else(|| inner_span(node));
        Some((node, ctx.at(self.at.child(name), span)))
    }

    /// The location of field `name`, which this table must not have (it is not listed
    /// among the known fields); the caller reports why.
    pub fn forbidden(&mut self, ctx: &Ctx, name: &str) -> Option<At> {
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        self.used[i] = true;
        let (key, _) = &self.entries[i];
        Some(ctx.at(self.at.child(name), key.span.as_ref()))
    }

    /// The names of the table's fields.
    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().map(|(k, _)| k.name.clone()).collect()
    }

    /// Whether the table has field `name` (without using it).
    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.name == name)
    }

    /// Field `name` converted by `conv`; a wrong type is reported with what was expected.
    fn typed<T>(
        &mut self,
        ctx: &mut Ctx,
        name: &'static str,
        conv: fn(&Kind) -> Option<T>,
        expected: &str,
    ) -> Option<Val<T>> {
        let (node, at) = self.node(ctx, name)?;
        match conv(&node.kind) {
            Some(v) => Some(Val { v, at }),
            None => {
                let msg = format!("expected {expected}, found {}", node.kind.describe());
                ctx.report(&at, msg);
                None
            }
        }
    }

    /// A string field.
    pub fn string(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Val<String>> {
        self.typed(ctx, name, as_str, "a string")
    }

    /// An integer field.
    pub fn int(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Val<i64>> {
        self.typed(ctx, name, as_int, "an integer")
    }

    /// A number field (integers accepted).
    pub fn float(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Val<f64>> {
        self.typed(ctx, name, as_float, "a number")
    }

    /// A boolean field.
    pub fn bool(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Val<bool>> {
        self.typed(ctx, name, as_bool, "true or false")
    }

    /// A sub-table.
    pub fn table(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Table<'n>> {
        let (node, at) = self.node(ctx, name)?;
        Table::new(ctx, node, at.path)
    }

    /// A table of strings (labels, headers), in source order.
    pub fn string_map(&mut self, ctx: &mut Ctx, name: &'static str) -> Option<Val<Pairs>> {
        let (node, at) = self.node(ctx, name)?;
        let Kind::Table(entries) = &node.kind else {
            let msg = format!(
                "expected a table of strings, found {}",
                node.kind.describe()
            );
            ctx.report(&at, msg);
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let key_at = ctx.at(at.child(&k.name), k.span.as_ref());
            let val_at = ctx.at(key_at.path.clone(), v.span.as_ref().or(k.span.as_ref()));
            match &v.kind {
                Kind::Str(s) => out.push((
                    Val {
                        v: k.name.clone(),
                        at: key_at,
                    },
                    Val {
                        v: s.clone(),
                        at: val_at,
                    },
                )),
                other => ctx.report(
                    &val_at,
                    format!("expected a string, found {}", other.describe()),
                ),
            }
        }
        Some(Val { v: out, at })
    }

    /// Report every key that no one asked for.
    pub fn finish(self, ctx: &mut Ctx) {
        for ((key, _), used) in self.entries.iter().zip(&self.used) {
            if !used {
                let at = ctx.at(self.at.child(&key.name), key.span.as_ref());
                let msg = format!(
                    "unknown field `{}`; expected one of: {}",
                    key.name,
                    self.known.join(", ")
                );
                ctx.report(&at, msg);
            }
        }
    }
}

/// The first span inside a node: tables made implicitly by dotted keys (`http.path`) or
/// by deeper headers (`[check.http.expect_header]`) have none of their own, and are
/// then placed at their first field.
fn inner_span(node: &Node) -> Option<&Range<usize>> {
    match &node.kind {
        Kind::Table(entries) => entries.iter().find_map(|(k, v)| {
            k.span
                .as_ref()
                .or(v.span.as_ref())
                .or_else(|| inner_span(v))
        }),
        Kind::Array(items) => items
            .iter()
            .find_map(|n| n.span.as_ref().or_else(|| inner_span(n))),
        _ => None,
    }
}

/// The string of a node, if it is one.
pub(crate) fn as_str(k: &Kind) -> Option<String> {
    match k {
        Kind::Str(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_int(k: &Kind) -> Option<i64> {
    match k {
        Kind::Int(i) => Some(*i),
        _ => None,
    }
}

fn as_float(k: &Kind) -> Option<f64> {
    match k {
        Kind::Float(f) => Some(*f),
        Kind::Int(i) => Some(*i as f64),
        _ => None,
    }
}

fn as_bool(k: &Kind) -> Option<bool> {
    match k {
        Kind::Bool(b) => Some(*b),
        _ => None,
    }
}

/// Describe a node's type for messages ("an integer", ...).
pub(crate) fn describe(n: &Node) -> &'static str {
    n.kind.describe()
}
