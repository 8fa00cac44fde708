/* Subcommands of the geoloc CLI. Each takes argv from its own name on and
 * returns the process exit status (0 ok, 1 failure, 2 usage). */
#ifndef GL_TOOLS_COMMANDS_H
#define GL_TOOLS_COMMANDS_H

int gl_cmd_bench(int argc, char **argv);
int gl_cmd_bridge(int argc, char **argv);
int gl_cmd_ping(int argc, char **argv);
int gl_cmd_encode(int argc, char **argv);
int gl_cmd_eval(int argc, char **argv);
int gl_cmd_inspect(int argc, char **argv);
int gl_cmd_locate(int argc, char **argv);
int gl_cmd_map(int argc, char **argv);
int gl_cmd_query(int argc, char **argv);
int gl_cmd_token(int argc, char **argv);

#endif
