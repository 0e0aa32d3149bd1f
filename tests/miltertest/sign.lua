-- Driven by tests/milter.rs through libmilter's own client, miltertest(8) (OpenDKIM's
-- independent implementation of the MTA side). Variables given with -D: socket, from.
-- Prints the inserted DKIM-Signature value between markers for the Rust side to check.
mt.set_timeout(30)
local conn = mt.connect(socket, 50, 0.1)
if conn == nil then error("cannot connect to " .. socket) end
if mt.conninfo(conn, "localhost", "127.0.0.1") ~= nil then error("conninfo failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("conninfo: unexpected reply") end
mt.macro(conn, SMFIC_MAIL, "i", "MTQUEUEID")
if mt.mailfrom(conn, from) ~= nil then error("mailfrom failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("mailfrom: unexpected reply") end

if mt.rcptto(conn, "<rcpt@example.net>") ~= nil then error("rcptto failed") end
-- Values as an MTA sends them to a filter that did not ask for leading spaces
-- (SMFIP_HDR_LEADSPC, which miltertest does not offer): without the space after the colon.
local headers = {
    {"From", "Alice <" .. from .. ">"},
    {"To", "rcpt@example.net"},
    {"Subject", "miltertest\n\twith a folded line"},
    {"Date", "Tue, 01 Dec 2026 05:00:00 +0000"},
    {"Message-ID", "<mt.1@example.com>"},
}
for _, h in ipairs(headers) do
    if mt.header(conn, h[1], h[2]) ~= nil then error("header failed") end
end
if mt.eoh(conn) ~= nil then error("eoh failed") end
if mt.bodystring(conn, "Hello from miltertest.\r\n\r\n-- \r\nAlice\r\n") ~= nil then error("body failed") end
if mt.eom(conn) ~= nil then error("eom failed") end
if not mt.eom_check(conn, MT_HDRINSERT, "DKIM-Signature") then error("no DKIM-Signature inserted") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("eom: not accepted") end
mt.echo("BEGIN-SIGNATURE")
mt.echo(mt.getheader(conn, "DKIM-Signature", 0))
mt.echo("END-SIGNATURE")
mt.disconnect(conn)
