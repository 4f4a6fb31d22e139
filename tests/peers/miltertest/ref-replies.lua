-- ref-replies.lua -- check that ref-milter (tests/peers/ref-milter.c) gives each
-- of its special replies; the same transactions are what an MTA-side client
-- should decode.
--
--   miltertest -s ref-replies.lua -D sock=inet:PORT@127.0.0.1
--
-- One connection, one transaction per case:
--   MAIL <reject@example.com>    -> SMFIR_REJECT
--   MAIL <tempfail@example.com>  -> SMFIR_TEMPFAIL
--   MAIL <replycode@example.com> -> SMFIR_REPLYCODE (550 5.7.1 ref says no; miltertest
--                                   cannot show the text of a non-EOM reply)
--   MAIL <accept@example.com>    -> SMFIR_ACCEPT, then mt.abort
--   MAIL <discard@example.com>   -> SMFIR_CONTINUE ... EOM -> SMFIR_DISCARD
--   RCPT <skipbody@example.net>  -> SMFIR_CONTINUE, first body chunk -> SMFIR_SKIP,
--                                   EOM -> SMFIR_CONTINUE
-- Works whatever -P the filter was started with, as long as MAIL, RCPT and
-- body are neither negotiated away (SMFIP_NO*) nor left without reply (SMFIP_NR_*).

local SCRIPT = "ref-replies.lua"

------------------------------------------------------------------------------
-- helpers (the same in every script in this directory)

local function param(name, env, default)
	local v = rawget(_G, name)
	if v == nil and env ~= nil then v = os.getenv(env) end
	if v == nil then v = default end
	return v
end

local function fail(fmt, ...)
	error(string.format(fmt, ...), 0)
end

local reply_names = {
	[SMFIR_CONTINUE] = "SMFIR_CONTINUE", [SMFIR_ACCEPT] = "SMFIR_ACCEPT",
	[SMFIR_REJECT] = "SMFIR_REJECT", [SMFIR_TEMPFAIL] = "SMFIR_TEMPFAIL",
	[SMFIR_DISCARD] = "SMFIR_DISCARD", [SMFIR_REPLYCODE] = "SMFIR_REPLYCODE",
	[SMFIR_SKIP] = "SMFIR_SKIP",
}

local function rname(r)
	if r == nil then return "nil" end
	if reply_names[r] ~= nil then return reply_names[r] end
	if r == 0 then return "no reply" end
	local i = math.tointeger(r)
	if i ~= nil and i > 32 and i < 127 then
		return string.format("'%s' (%d)", string.char(i), i)
	end
	return tostring(r)
end

local conn

-- check one step: err is what the mt.* call returned, want one reply or a list
local function expect(what, err, want)
	if err ~= nil then
		fail("%s: miltertest: %s", what, tostring(err))
	end
	local got = mt.getreply(conn)
	local wants = type(want) == "table" and want or { want }
	for _, w in ipairs(wants) do
		if got == w then return got end
	end
	local names = {}
	for _, w in ipairs(wants) do names[#names + 1] = rname(w) end
	fail("%s: expected %s, got %s", what, table.concat(names, " or "), rname(got))
end

-- did the filter negotiate this stage away?
local function skips(flag, what)
	if mt.test_option(conn, flag) then
		mt.echo(SCRIPT .. ": " .. what .. ": not sent (filter negotiated it away)")
		return true
	end
	return false
end

local function open(sock)
	conn = mt.connect(sock, 40, 0.25)
	if conn == nil then
		fail("cannot connect to %s", sock)
	end
	local err = mt.negotiate(conn, nil, nil, nil)
	if err ~= nil then
		fail("negotiate: %s", tostring(err))
	end
	if mt.getreply(conn) ~= string.byte("O") then
		fail("negotiate: filter refused (reply %s)", rname(mt.getreply(conn)))
	end
end

local function run(main)
	local ok, msg = pcall(main)
	io.stdout:flush()
	if not ok then
		io.stderr:write(SCRIPT, ": FAIL: ", tostring(msg), "\n")
		error(msg, 0) -- miltertest exits with status 1
	end
	print(SCRIPT .. ": ok")
end

-- macro stages miltertest has no constant for
local SMFIC_DATA_ = string.byte("T")
local SMFIC_EOM_ = string.byte("E")

------------------------------------------------------------------------------

local function main()
	local sock = param("sock", "MILTER_SOCKET", nil)
	if sock == nil then
		fail("no socket: pass -D sock=inet:PORT@127.0.0.1 or set MILTER_SOCKET")
	end
	open(sock)
	for _, f in ipairs({ "SMFIP_NOMAIL", "SMFIP_NORCPT", "SMFIP_NOBODY",
			"SMFIP_NR_MAIL", "SMFIP_NR_RCPT", "SMFIP_NR_BODY" }) do
		if mt.test_option(conn, _G[f]) then
			fail("filter negotiated %s; this script needs MAIL, RCPT and body replies", f)
		end
	end

	-- earlier stages first: a stage miltertest fills in by itself would make
	-- libmilter drop the macros already sent for later stages
	if not skips(SMFIP_NOCONNECT, "connect") then
		mt.macro(conn, SMFIC_CONNECT, "{client_addr}", "192.0.2.99", "{daemon_name}", "ref")
		expect("connect", mt.conninfo(conn, "client.example.com", "192.0.2.99"), SMFIR_CONTINUE)
	end
	if not skips(SMFIP_NOHELO, "helo") then
		expect("helo", mt.helo(conn, "client.example.com"), SMFIR_CONTINUE)
	end

	local function mail(from, want)
		mt.macro(conn, SMFIC_MAIL, "i", "7RePl1e5", "{auth_authen}", "tester@example.com",
			"{mail_addr}", from)
		expect("MAIL FROM <" .. from .. ">", mt.mailfrom(conn, "<" .. from .. ">"), want)
	end
	local function rcpt(to, want)
		mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", to)
		expect("RCPT TO <" .. to .. ">", mt.rcptto(conn, "<" .. to .. ">"), want)
	end

	mail("reject@example.com", SMFIR_REJECT)
	mail("tempfail@example.com", SMFIR_TEMPFAIL)
	mail("replycode@example.com", SMFIR_REPLYCODE)
	mail("accept@example.com", SMFIR_ACCEPT)
	local err = mt.abort(conn)
	if err ~= nil then fail("abort: %s", tostring(err)) end

	mail("discard@example.com", SMFIR_CONTINUE)
	rcpt("someone@example.net", SMFIR_CONTINUE)
	if not skips(SMFIP_NOHDRS, "discard: headers") then
		expect("discard: header", mt.header(conn, "Subject", "discard me"), SMFIR_CONTINUE)
	end
	if not skips(SMFIP_NOBODY, "discard: body") then
		expect("discard: body", mt.bodystring(conn, "bye\r\n"), SMFIR_CONTINUE)
	end
	expect("discard: EOM", mt.eom(conn), SMFIR_DISCARD)

	mail("sender@example.com", SMFIR_CONTINUE)
	rcpt("someone@example.net", SMFIR_CONTINUE)
	rcpt("skipbody@example.net", SMFIR_CONTINUE)
	if not mt.test_option(conn, SMFIP_SKIP) then
		fail("filter did not negotiate SMFIP_SKIP")
	end
	expect("skipbody: body chunk 1", mt.bodystring(conn, "chunk one\r\n"), SMFIR_SKIP)
	expect("skipbody: EOM", mt.eom(conn), SMFIR_CONTINUE)

	mt.disconnect(conn)
end

run(main)
