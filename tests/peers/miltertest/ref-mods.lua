-- ref-mods.lua -- check the end-of-message modifications of `ref-milter -m`
-- (tests/peers/ref-milter.c) as far as miltertest can see them.
--
--   miltertest -s ref-mods.lua -D sock=inet:PORT@127.0.0.1
--
-- One full transaction; EOM must answer SMFIR_CONTINUE after requesting
--   add header X-Ref-Added: yes, insert header X-Ref-Inserted: yes at index 1,
--   change the first Subject to "changed", add recipient <added@example.com>,
--   delete recipient <deleted@example.com>, replace the body, quarantine with
--   "ref quarantine" (and progress).
-- miltertest has no check for smfi_addrcpt_par (SMFIR_ADDRCPT_PAR) or
-- smfi_chgfrom (SMFIR_CHGFROM): those two ref-milter requests are not checked.

local SCRIPT = "ref-mods.lua"

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

	-- earlier stages first: a stage miltertest fills in by itself would make
	-- libmilter drop the macros already sent for later stages
	if not skips(SMFIP_NOCONNECT, "connect") then
		expect("connect", mt.conninfo(conn, "client.example.com", "192.0.2.99"), SMFIR_CONTINUE)
	end
	if not skips(SMFIP_NOHELO, "helo") then
		expect("helo", mt.helo(conn, "client.example.com"), SMFIR_CONTINUE)
	end
	mt.macro(conn, SMFIC_MAIL, "i", "8MoD5", "{auth_authen}", "tester@example.com")
	expect("MAIL FROM", mt.mailfrom(conn, "<tester@example.com>"), SMFIR_CONTINUE)
	expect("RCPT TO", mt.rcptto(conn, "<deleted@example.com>"), SMFIR_CONTINUE)
	expect("header Subject", mt.header(conn, "Subject", "original"), SMFIR_CONTINUE)
	expect("EOH", mt.eoh(conn), SMFIR_CONTINUE)
	expect("body", mt.bodystring(conn, "original body\r\n"), SMFIR_CONTINUE)
	expect("EOM", mt.eom(conn), SMFIR_CONTINUE)

	local checks = {
		{ "add header X-Ref-Added: yes", MT_HDRADD, "X-Ref-Added", "yes" },
		{ "insert header X-Ref-Inserted: yes at 1", MT_HDRINSERT, "X-Ref-Inserted", "yes", 1 },
		{ "change header Subject: changed", MT_HDRCHANGE, "Subject", "changed" },
		{ "add recipient <added@example.com>", MT_RCPTADD, "<added@example.com>" },
		{ "delete recipient <deleted@example.com>", MT_RCPTDELETE, "<deleted@example.com>" },
		{ "replace body", MT_BODYCHANGE, "Body replaced by ref-milter.\r\n" },
		{ "quarantine", MT_QUARANTINE, "ref quarantine" },
	}
	for _, c in ipairs(checks) do
		if not mt.eom_check(conn, table.unpack(c, 2)) then
			fail("EOM: filter did not request: %s", c[1])
		end
	end

	mt.disconnect(conn)
end

run(main)
