//! Tag lists (RFC 6376 §3.2) and the name rules of d=, s= and i=.
