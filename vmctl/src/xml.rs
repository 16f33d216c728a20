//! A small XML element tree for what vmctl hands libvirt. Every name and value goes through
//! [`escape`], so a VM name, path or command line can never change the document's structure.

use std::fmt::{self, Write};

/// An element: a name, attributes in order, and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: &'static str,
    attributes: Vec<(&'static str, String)>,
    children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &'static str) -> Element {
        Element {
            name,
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds an attribute.
    pub fn attr(mut self, name: &'static str, value: impl ToString) -> Element {
        self.attributes.push((name, value.to_string()));
        self
    }

    /// Adds a child element.
    pub fn child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    /// Adds a child element if there is one.
    pub fn child_opt(self, child: Option<Element>) -> Element {
        match child {
            Some(child) => self.child(child),
            None => self,
        }
    }

    /// Adds child elements.
    pub fn children(mut self, children: impl IntoIterator<Item = Element>) -> Element {
        self.children
            .extend(children.into_iter().map(Node::Element));
        self
    }

    /// Adds text content.
    pub fn text(mut self, text: impl ToString) -> Element {
        self.children.push(Node::Text(text.to_string()));
        self
    }

    /// `<name>text</name>`.
    pub fn with_text(name: &'static str, text: impl ToString) -> Element {
        Element::new(name).text(text)
    }

    fn write(&self, out: &mut String, depth: usize) -> fmt::Result {
        let indent = "  ".repeat(depth);
        write!(out, "{indent}<{}", self.name)?;
        for (name, value) in &self.attributes {
            write!(out, " {name}='{}'", escape(value))?;
        }
        match self.children.as_slice() {
            [] => writeln!(out, "/>"),
            [Node::Text(text)] => writeln!(out, ">{}</{}>", escape(text), self.name),
            children => {
                writeln!(out, ">")?;
                for child in children {
                    match child {
                        Node::Element(element) => element.write(out, depth + 1)?,
                        Node::Text(text) => writeln!(out, "{indent}  {}", escape(text))?,
                    }
                }
                writeln!(out, "{indent}</{}>", self.name)
            }
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write(&mut out, 0)?;
        f.write_str(&out)
    }
}

/// Escapes text for an attribute value (in single or double quotes) or element content.
/// Characters XML 1.0 cannot carry at all (control characters but tab and newlines) become
/// U+FFFD: vmctl checks names before they get here, so only foreign text can hold them.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_break_out_of_their_place() {
        let element = Element::new("disk")
            .attr("type", "file")
            .child(Element::new("source").attr("file", "/x'/><evil a='"))
            .child(Element::with_text("serial", "</serial><evil/>&\u{1}"));
        let xml = element.to_string();
        assert_eq!(
            xml,
            "<disk type='file'>\n  <source file='/x&apos;/&gt;&lt;evil a=&apos;'/>\n  \
             <serial>&lt;/serial&gt;&lt;evil/&gt;&amp;\u{fffd}</serial>\n</disk>\n"
        );
        assert!(!xml.contains("<evil"));
    }
}
