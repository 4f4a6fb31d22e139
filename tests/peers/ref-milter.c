/*
 * ref-milter -- a tiny reference filter on Sendmail's libmilter.
 *
 * It exists to prove that outbound-guard's MTA-side test client speaks the
 * protocol the way the reference implementation understands it, and to serve
 * as the "no-op libmilter filter" in performance comparisons.
 *
 * Build:
 *   cc -O2 -Wall -o ref-milter tests/peers/ref-milter.c -lmilter -lpthread
 *
 * Usage:
 *   ref-milter -p SOCKET [-l LOGFILE] [-m] [-P STEPS]
 *
 *   -p SOCKET   libmilter connection spec, e.g. inet:PORT@127.0.0.1 or
 *               unix:PATH (required)
 *   -l LOGFILE  append one line per callback to LOGFILE (see below); without
 *               -l no I/O at all is done per callback
 *   -m          at end of message, request every message modification
 *   -P STEPS    extra SMFIP_* protocol bits to ask for (number, 0x... ok),
 *               e.g. 0x3 = SMFIP_NOCONNECT|SMFIP_NOHELO; masked by what the
 *               MTA offers.  For testing clients and scripts against a filter
 *               that skips stages; by default the filter asks for every step.
 *
 * Once the socket is listening it prints "ref-milter: listening on SOCKET"
 * to stdout.  SIGTERM/SIGINT/SIGHUP stop it cleanly: libmilter's own signal
 * thread sets libmilter's stop flag (as smfi_stop does); a watchdog thread
 * sees the flag within 50 ms and exits with status 0 (libmilter's listener
 * itself looks at the flag only every 5 seconds).
 *
 * Log format: one line per event, fields separated by single spaces,
 *
 *   <conn> <event> [fields...]
 *
 * where <conn> is a decimal connection serial (1, 2, ...) assigned at
 * negotiation.  Each line is written with a single write(2) to the file
 * opened with O_APPEND, so lines of concurrent connections never mix.
 * Bytes are escaped as \\ \r \n \t and \xHH (every other byte below 0x20
 * or above 0x7e); inside space-separated fields (key=value fields, macro
 * values, envfrom/envrcpt arguments, body data) a space is escaped as \x20
 * too.  Free text at the end of a line (helo, unknown, header value) keeps
 * its spaces.
 *
 *   N negotiate offered_actions=0xA offered_steps=0xS actions=0xA steps=0xS
 *                               (offered_* as libmilter hands them to
 *                               xxfi_negotiate: offered_steps includes the
 *                               SMFIP_NR_* bits libmilter can emulate)
 *   N connect host=H family=4|6|L|U addr=A port=P   (addr/port "-" when unknown)
 *   N helo NAME
 *   N envfrom ARG0 [ARG1 ...]
 *   N envrcpt ARG0 [ARG1 ...]
 *   N data
 *   N unknown COMMAND
 *   N header NAME: VALUE        (VALUE = everything after the ": ")
 *   N eoh
 *   N body len=LEN crc32=XXXXXXXX data=BYTES    (the whole chunk)
 *   N eom body_len=TOTAL body_crc32=XXXXXXXX    (all chunks of the message)
 *   N abort
 *   N close                     (not logged for a connection that never
 *                               got as far as negotiation)
 *   N macro NAME=VALUE          after connect/envfrom/envrcpt/eom, one per
 *   N macro NAME unset          macro requested for that stage
 *   N mod OPERATION ok|failed   with -m, after eom, one per modification
 *
 * Requested macros (smfi_setsymlist, if the MTA offers SMFIF_SETSYMLIST):
 *   connect: {client_addr} {daemon_name}
 *   envfrom: i {auth_authen} {auth_type} {mail_addr}
 *   envrcpt: {rcpt_addr}
 *   eom:     i
 *
 * Replies (always active, for testing reply decoding); "local part" is the
 * part of the address before '@', angle brackets ignored, case-insensitive:
 *   sender reject     -> SMFIS_REJECT at envfrom
 *   sender tempfail   -> SMFIS_TEMPFAIL at envfrom
 *   sender replycode  -> smfi_setreply 550 5.7.1 "ref says no", SMFIS_REJECT
 *   sender accept     -> SMFIS_ACCEPT at envfrom
 *   sender discard    -> SMFIS_DISCARD at eom
 *   recipient skipbody -> SMFIS_SKIP from the first body callback
 * Everything else answers SMFIS_CONTINUE (SMFIS_NOREPLY for stages whose
 * "no reply" bit was negotiated via -P).  CRC-32 is the common one
 * (IEEE 802.3, as zlib's crc32), printed as 8 lower-case hex digits.
 */

#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libmilter/mfapi.h>
#include <libmilter/mfdef.h>

#define PROG "ref-milter"

static int log_fd = -1;
static bool opt_modify = false;
static unsigned long opt_steps = 0;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long next_id = 1;

static char *macros_connect[] = { "{client_addr}", "{daemon_name}", NULL };
static char *macros_envfrom[] = { "i", "{auth_authen}", "{auth_type}", "{mail_addr}", NULL };
static char *macros_envrcpt[] = { "{rcpt_addr}", NULL };
static char *macros_eom[] = { "i", NULL };

struct conn
{
	unsigned long id;
	unsigned long steps;		/* negotiated SMFIP_* bits */
	bool discard;			/* sender local part "discard" */
	bool skipbody;			/* a recipient local part "skipbody" */
	bool body_seen;			/* first body chunk of this message seen */
	unsigned long long body_len;	/* body bytes of this message */
	uint32_t body_crc;		/* running CRC-32 of this message's body */
};

/* ------------------------------------------------------------------ */
/* log lines                                                          */

struct line
{
	char *buf;
	size_t len;
	size_t cap;
	bool oom;
};

static void
line_grow(struct line *l, size_t more)
{
	size_t need;
	char *nb;

	if (l->oom)
		return;
	need = l->len + more + 1;
	if (need <= l->cap)
		return;
	if (l->cap == 0)
		l->cap = 256;
	while (l->cap < need)
		l->cap *= 2;
	nb = realloc(l->buf, l->cap);
	if (nb == NULL)
	{
		l->oom = true;
		return;
	}
	l->buf = nb;
}

static void
line_raw(struct line *l, const char *s, size_t n)
{
	line_grow(l, n);
	if (l->oom)
		return;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	l->buf[l->len] = '\0';
}

static void
line_str(struct line *l, const char *s)
{
	line_raw(l, s, strlen(s));
}

static void
line_fmt(struct line *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
line_fmt(struct line *l, const char *fmt, ...)
{
	va_list ap;
	char tmp[256];
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t) n >= sizeof tmp)
		n = sizeof tmp - 1;
	line_raw(l, tmp, (size_t) n);
}

/* append bytes, escaped; esc_space also escapes ' ' (for field lists) */
static void
line_esc(struct line *l, const unsigned char *s, size_t n, bool esc_space)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	line_grow(l, n * 4);
	if (l->oom)
		return;
	for (i = 0; i < n; i++)
	{
		unsigned char c = s[i];
		char *o = l->buf + l->len;

		switch (c)
		{
		  case '\\':
			o[0] = '\\'; o[1] = '\\'; l->len += 2;
			break;
		  case '\r':
			o[0] = '\\'; o[1] = 'r'; l->len += 2;
			break;
		  case '\n':
			o[0] = '\\'; o[1] = 'n'; l->len += 2;
			break;
		  case '\t':
			o[0] = '\\'; o[1] = 't'; l->len += 2;
			break;
		  default:
			if (c < 0x20 || c > 0x7e || (esc_space && c == ' '))
			{
				o[0] = '\\'; o[1] = 'x';
				o[2] = hex[c >> 4]; o[3] = hex[c & 0xf];
				l->len += 4;
			}
			else
			{
				o[0] = (char) c;
				l->len += 1;
			}
			break;
		}
	}
	l->buf[l->len] = '\0';
}

static void
line_escs(struct line *l, const char *s, bool esc_space)
{
	if (s == NULL)
		s = "";
	line_esc(l, (const unsigned char *) s, strlen(s), esc_space);
}

static void
line_begin(struct line *l, struct conn *c, const char *event)
{
	memset(l, 0, sizeof *l);
	line_fmt(l, "%lu %s", c != NULL ? c->id : 0UL, event);
}

/* write the line (plus newline) in one go, then free it */
static void
line_end(struct line *l)
{
	size_t off = 0;

	line_raw(l, "\n", 1);
	if (!l->oom)
	{
		pthread_mutex_lock(&log_lock);
		while (off < l->len)
		{
			ssize_t w = write(log_fd, l->buf + off, l->len - off);

			if (w < 0)
			{
				if (errno == EINTR)
					continue;
				break;
			}
			off += (size_t) w;
		}
		pthread_mutex_unlock(&log_lock);
	}
	free(l->buf);
	memset(l, 0, sizeof *l);
}

static void
log_simple(struct conn *c, const char *event)
{
	struct line l;

	line_begin(&l, c, event);
	line_end(&l);
}

static void
log_macros(SMFICTX *ctx, struct conn *c, char **names)
{
	struct line l;
	char *v;

	for (; *names != NULL; names++)
	{
		line_begin(&l, c, "macro ");
		line_escs(&l, *names, true);
		v = smfi_getsymval(ctx, *names);
		if (v != NULL)
		{
			line_str(&l, "=");
			line_escs(&l, v, true);
		}
		else
			line_str(&l, " unset");
		line_end(&l);
	}
}

static void
log_argv(struct conn *c, const char *event, char **argv)
{
	struct line l;

	line_begin(&l, c, event);
	for (; argv != NULL && *argv != NULL; argv++)
	{
		line_str(&l, " ");
		line_escs(&l, *argv, true);
	}
	line_end(&l);
}

/* ------------------------------------------------------------------ */
/* helpers                                                            */

static uint32_t
crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
	size_t i;
	int k;

	crc = ~crc;
	for (i = 0; i < n; i++)
	{
		crc ^= p[i];
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320U & (0U - (crc & 1U)));
	}
	return ~crc;
}

/* is the local part of ADDR (angle brackets ignored) equal to WANT? */
static bool
localpart_is(const char *addr, const char *want)
{
	size_t n = strlen(want);

	if (addr == NULL)
		return false;
	while (*addr == ' ' || *addr == '<')
		addr++;
	if (strncasecmp(addr, want, n) != 0)
		return false;
	return addr[n] == '@' || addr[n] == '>' || addr[n] == '\0';
}

static void
new_message(struct conn *c)
{
	c->discard = false;
	c->skipbody = false;
	c->body_seen = false;
	c->body_len = 0;
	c->body_crc = 0;
}

static struct conn *
get_conn(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c == NULL)
	{
		c = calloc(1, sizeof *c);
		if (c == NULL)
			return NULL;
		pthread_mutex_lock(&id_lock);
		c->id = next_id++;
		pthread_mutex_unlock(&id_lock);
		smfi_setpriv(ctx, c);
	}
	return c;
}

/* the "nothing to say" answer for a stage: CONTINUE, or NOREPLY if negotiated */
static sfsistat
cont(struct conn *c, unsigned long nr_bit)
{
	if (c != NULL && (c->steps & nr_bit) != 0)
		return SMFIS_NOREPLY;
	return SMFIS_CONTINUE;
}

/* ------------------------------------------------------------------ */
/* callbacks                                                          */

static sfsistat
ref_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
	      unsigned long f2, unsigned long f3,
	      unsigned long *pf0, unsigned long *pf1,
	      unsigned long *pf2, unsigned long *pf3)
{
	struct conn *c = get_conn(ctx);

	(void) f2;
	(void) f3;

	/* every action the MTA offers */
	*pf0 = f0 & SMFI_CURR_ACTS;
	/* every step: no SMFIP_NO* / NR_* bits, but SKIP if the MTA has it */
	*pf1 = (f1 & SMFIP_SKIP) | (opt_steps & f1);
	*pf2 = 0;
	*pf3 = 0;

	if ((f0 & SMFIF_SETSYMLIST) != 0)
	{
		smfi_setsymlist(ctx, SMFIM_CONNECT, "{client_addr} {daemon_name}");
		smfi_setsymlist(ctx, SMFIM_ENVFROM,
				"i {auth_authen} {auth_type} {mail_addr}");
		smfi_setsymlist(ctx, SMFIM_ENVRCPT, "{rcpt_addr}");
		smfi_setsymlist(ctx, SMFIM_EOM, "i");
	}

	if (c != NULL)
	{
		c->steps = *pf1;
		if (log_fd >= 0)
		{
			struct line l;

			line_begin(&l, c, "negotiate");
			line_fmt(&l,
				 " offered_actions=0x%lx offered_steps=0x%lx"
				 " actions=0x%lx steps=0x%lx",
				 f0, f1, *pf0, *pf1);
			line_end(&l);
		}
	}
	return SMFIS_CONTINUE;
}

static sfsistat
ref_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
	{
		struct line l;
		char addr[INET6_ADDRSTRLEN + 1];
		const char *family = "U";
		const char *a = "-";
		char port[16] = "-";

		if (sa != NULL && sa->sa_family == AF_INET)
		{
			struct sockaddr_in *s4 = (struct sockaddr_in *) sa;

			family = "4";
			a = inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
			snprintf(port, sizeof port, "%u",
				 (unsigned) ntohs(s4->sin_port));
		}
		else if (sa != NULL && sa->sa_family == AF_INET6)
		{
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) sa;

			family = "6";
			a = inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
			snprintf(port, sizeof port, "%u",
				 (unsigned) ntohs(s6->sin6_port));
		}
		else if (sa != NULL && sa->sa_family == AF_UNIX)
		{
			family = "L";
			a = ((struct sockaddr_un *) sa)->sun_path;
		}
		if (a == NULL)
			a = "?";

		line_begin(&l, c, "connect host=");
		line_escs(&l, host, true);
		line_fmt(&l, " family=%s addr=", family);
		line_escs(&l, a, true);
		line_fmt(&l, " port=%s", port);
		line_end(&l);
		log_macros(ctx, c, macros_connect);
	}
	return cont(c, SMFIP_NR_CONN);
}

static sfsistat
ref_helo(SMFICTX *ctx, char *name)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
	{
		struct line l;

		line_begin(&l, c, "helo ");
		line_escs(&l, name, false);
		line_end(&l);
	}
	return cont(c, SMFIP_NR_HELO);
}

static sfsistat
ref_envfrom(SMFICTX *ctx, char **argv)
{
	struct conn *c = get_conn(ctx);
	const char *from = argv != NULL ? argv[0] : NULL;

	if (c != NULL)
		new_message(c);
	if (log_fd >= 0)
	{
		log_argv(c, "envfrom", argv);
		log_macros(ctx, c, macros_envfrom);
	}

	if (localpart_is(from, "reject"))
		return SMFIS_REJECT;
	if (localpart_is(from, "tempfail"))
		return SMFIS_TEMPFAIL;
	if (localpart_is(from, "replycode"))
	{
		smfi_setreply(ctx, "550", "5.7.1", "ref says no");
		return SMFIS_REJECT;
	}
	if (localpart_is(from, "accept"))
		return SMFIS_ACCEPT;
	if (c != NULL && localpart_is(from, "discard"))
		c->discard = true;
	return cont(c, SMFIP_NR_MAIL);
}

static sfsistat
ref_envrcpt(SMFICTX *ctx, char **argv)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
	{
		log_argv(c, "envrcpt", argv);
		log_macros(ctx, c, macros_envrcpt);
	}
	if (c != NULL && argv != NULL && localpart_is(argv[0], "skipbody"))
		c->skipbody = true;
	return cont(c, SMFIP_NR_RCPT);
}

static sfsistat
ref_data(SMFICTX *ctx)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
		log_simple(c, "data");
	return cont(c, SMFIP_NR_DATA);
}

static sfsistat
ref_unknown(SMFICTX *ctx, const char *cmd)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
	{
		struct line l;

		line_begin(&l, c, "unknown ");
		line_escs(&l, cmd, false);
		line_end(&l);
	}
	return cont(c, SMFIP_NR_UNKN);
}

static sfsistat
ref_header(SMFICTX *ctx, char *name, char *value)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
	{
		struct line l;
		const char *p;

		line_begin(&l, c, "header ");
		/* a name has no spaces or colons; escape them should one come */
		for (p = name != NULL ? name : ""; *p != '\0'; p++)
		{
			if (*p == ':')
				line_str(&l, "\\x3a");
			else
				line_esc(&l, (const unsigned char *) p, 1, true);
		}
		line_str(&l, ": ");
		line_escs(&l, value, false);
		line_end(&l);
	}
	return cont(c, SMFIP_NR_HDR);
}

static sfsistat
ref_eoh(SMFICTX *ctx)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
		log_simple(c, "eoh");
	return cont(c, SMFIP_NR_EOH);
}

static sfsistat
ref_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct conn *c = get_conn(ctx);
	bool first = false;

	if (c != NULL)
	{
		first = !c->body_seen;
		c->body_seen = true;
	}
	if (log_fd >= 0)
	{
		struct line l;

		if (c != NULL)
		{
			c->body_len += len;
			c->body_crc = crc32_update(c->body_crc, chunk, len);
		}
		line_begin(&l, c, "body");
		line_fmt(&l, " len=%zu crc32=%08x data=", len,
			 (unsigned) crc32_update(0, chunk, len));
		line_esc(&l, chunk, len, true);
		line_end(&l);
	}
	if (first && c->skipbody)
		return SMFIS_SKIP;
	return cont(c, SMFIP_NR_BODY);
}

static void
log_mod(struct conn *c, const char *op, int r)
{
	struct line l;

	if (log_fd < 0)
		return;
	line_begin(&l, c, "mod ");
	line_str(&l, op);
	line_str(&l, r == MI_SUCCESS ? " ok" : " failed");
	line_end(&l);
}

static sfsistat
ref_eom(SMFICTX *ctx)
{
	static char new_body[] = "Body replaced by ref-milter.\r\n";
	struct conn *c = get_conn(ctx);
	bool discard = c != NULL && c->discard;

	if (log_fd >= 0)
	{
		struct line l;

		line_begin(&l, c, "eom");
		line_fmt(&l, " body_len=%llu body_crc32=%08x",
			 c != NULL ? c->body_len : 0ULL,
			 c != NULL ? (unsigned) c->body_crc : 0U);
		line_end(&l);
		log_macros(ctx, c, macros_eom);
	}

	if (opt_modify)
	{
		log_mod(c, "addheader",
			smfi_addheader(ctx, "X-Ref-Added", "yes"));
		log_mod(c, "insheader",
			smfi_insheader(ctx, 1, "X-Ref-Inserted", "yes"));
		log_mod(c, "chgheader",
			smfi_chgheader(ctx, "Subject", 1, "changed"));
		log_mod(c, "addrcpt",
			smfi_addrcpt(ctx, "<added@example.com>"));
		log_mod(c, "addrcpt_par",
			smfi_addrcpt_par(ctx, "<added2@example.com>",
					 "NOTIFY=NEVER"));
		log_mod(c, "delrcpt",
			smfi_delrcpt(ctx, "<deleted@example.com>"));
		log_mod(c, "chgfrom",
			smfi_chgfrom(ctx, "<new-from@example.com>", NULL));
		log_mod(c, "replacebody",
			smfi_replacebody(ctx, (unsigned char *) new_body,
					 (int) strlen(new_body)));
		log_mod(c, "quarantine",
			smfi_quarantine(ctx, "ref quarantine"));
		log_mod(c, "progress", smfi_progress(ctx));
	}

	if (c != NULL)
		new_message(c);
	return discard ? SMFIS_DISCARD : SMFIS_CONTINUE;
}

static sfsistat
ref_abort(SMFICTX *ctx)
{
	struct conn *c = get_conn(ctx);

	if (log_fd >= 0)
		log_simple(c, "abort");
	if (c != NULL)
		new_message(c);
	return SMFIS_CONTINUE;
}

static sfsistat
ref_close(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	/* a connection that closed before negotiating leaves no trace */
	if (c == NULL)
		return SMFIS_CONTINUE;
	if (log_fd >= 0)
		log_simple(c, "close");
	smfi_setpriv(ctx, NULL);
	free(c);
	return SMFIS_CONTINUE;
}

static struct smfiDesc ref_desc =
{
	"ref-milter",		/* filter name */
	SMFI_VERSION,		/* version code */
	SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT |
	SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT | SMFIF_QUARANTINE |
	SMFIF_CHGFROM | SMFIF_SETSYMLIST,	/* flags (overridden by negotiate) */
	ref_connect,
	ref_helo,
	ref_envfrom,
	ref_envrcpt,
	ref_header,
	ref_eoh,
	ref_body,
	ref_eom,
	ref_abort,
	ref_close,
	ref_unknown,
	ref_data,
	ref_negotiate
};

/*
 * libmilter's signal thread answers SIGTERM/SIGHUP/SIGINT by setting its stop
 * flag, but its listener looks at that flag only every 5 seconds (MI_CHK_TIME)
 * and only then does smfi_main return.  To stop promptly, a watchdog thread
 * polls the flag through mi_stop(), an internal libmilter function that every
 * libmilter since 8.10 exports (declared weak: without it there is no watchdog
 * and the stop just takes up to 5 seconds).
 */
extern int mi_stop(void) __attribute__((weak));

/* path of a unix-domain listening socket, removed on the way out */
static const char *unix_path = NULL;

static void *
watchdog(void *arg)
{
	(void) arg;
	for (;;)
	{
		struct timeval tv = { 0, 50000 };

		(void) select(0, NULL, NULL, NULL, &tv);
		if (mi_stop() != 0)	/* != MILTER_CONT */
		{
			/* finish any log line being written, then go */
			pthread_mutex_lock(&log_lock);
			if (unix_path != NULL)
				(void) unlink(unix_path);
			_exit(0);
		}
	}
	return NULL;
}

static void
usage(void)
{
	fprintf(stderr,
		"usage: %s -p SOCKET [-l LOGFILE] [-m] [-P STEPS]\n"
		"  -p SOCKET   e.g. inet:PORT@127.0.0.1 or unix:PATH\n"
		"  -l LOGFILE  append one line per callback\n"
		"  -m          request all modifications at end of message\n"
		"  -P STEPS    extra SMFIP_* bits to negotiate (testing)\n",
		PROG);
	exit(2);
}

int
main(int argc, char **argv)
{
	char *sock = NULL;
	char *logfile = NULL;
	char *end;
	int ch;
	int r;

	while ((ch = getopt(argc, argv, "p:l:mP:h")) != -1)
	{
		switch (ch)
		{
		  case 'p':
			sock = optarg;
			break;
		  case 'l':
			logfile = optarg;
			break;
		  case 'm':
			opt_modify = true;
			break;
		  case 'P':
			errno = 0;
			opt_steps = strtoul(optarg, &end, 0);
			if (errno != 0 || *optarg == '\0' || *end != '\0')
				usage();
			break;
		  default:
			usage();
		}
	}
	if (sock == NULL || optind != argc)
		usage();

	if (logfile != NULL)
	{
		log_fd = open(logfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
			      0644);
		if (log_fd < 0)
		{
			fprintf(stderr, "%s: %s: %s\n", PROG, logfile,
				strerror(errno));
			return 1;
		}
	}

	if (strncmp(sock, "unix:", 5) == 0 || strncmp(sock, "local:", 6) == 0)
		unix_path = strchr(sock, ':') + 1;
	else if (sock[0] == '/')
		unix_path = sock;

	if (smfi_setconn(sock) != MI_SUCCESS)
	{
		fprintf(stderr, "%s: smfi_setconn(%s) failed\n", PROG, sock);
		return 1;
	}
	if (smfi_register(ref_desc) != MI_SUCCESS)
	{
		fprintf(stderr, "%s: smfi_register failed\n", PROG);
		return 1;
	}
	/* bind and listen now, so that failure is reported and readiness known */
	if (smfi_opensocket(true) != MI_SUCCESS)
	{
		fprintf(stderr, "%s: cannot listen on %s\n", PROG, sock);
		return 1;
	}

	/*
	 * Threads inherit the signal mask: block the stop signals before
	 * starting the watchdog, so that only libmilter's signal thread
	 * (started in smfi_main) receives them.
	 */
	{
		sigset_t set;
		pthread_t tid;

		sigemptyset(&set);
		sigaddset(&set, SIGHUP);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		if (mi_stop != NULL &&
		    pthread_create(&tid, NULL, watchdog, NULL) == 0)
			(void) pthread_detach(tid);
	}
	printf("%s: listening on %s\n", PROG, sock);
	fflush(stdout);

	r = smfi_main();

	if (log_fd >= 0)
		close(log_fd);
	if (unix_path != NULL)
		(void) unlink(unix_path);
	return r == MI_SUCCESS ? 0 : 1;
}
