import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.solr.embedded.JettyConfig;
import org.apache.solr.embedded.JettySolrRunner;

/**
 * A standalone Solr 9 on 127.0.0.1 (JettySolrRunner binds loopback only) at /solr.
 *
 * <p>Usage: SolrLauncher SOLR_HOME PORT [--exit-on-stdin-eof]. The home holds solr.xml and one
 * directory per core (core.properties + conf/); devstack/solr/__init__.py writes it. Runs until
 * SIGTERM, when the shutdown hook stops Jetty and closes the cores; with --exit-on-stdin-eof also
 * when its standard input closes, so a test session that dies leaves no Solr behind (the session
 * holds the pipe's other end).
 */
public final class SolrLauncher {
  public static void main(String[] args) throws Exception {
    boolean watchStdin = args.length == 3 && args[2].equals("--exit-on-stdin-eof");
    if (args.length != 2 && !watchStdin) {
      System.err.println("usage: SolrLauncher SOLR_HOME PORT [--exit-on-stdin-eof]");
      System.exit(2);
    }
    Path home = Path.of(args[0]).toAbsolutePath();
    if (!Files.isRegularFile(home.resolve("solr.xml"))) {
      System.err.println("no solr.xml in " + home);
      System.exit(2);
    }
    JettyConfig config =
        JettyConfig.builder()
            .setPort(Integer.parseInt(args[1]))
            .setContext("/solr")
            .stopAtShutdown(true)
            .build();
    if (watchStdin) {
      Thread watcher =
          new Thread(
              () -> {
                try {
                  while (System.in.read() != -1) {
                    // input is ignored: only its end matters
                  }
                } catch (IOException e) {
                  // a broken pipe is an end too
                }
                System.exit(0);
              },
              "stdin-eof-watcher");
      watcher.setDaemon(true);
      watcher.start();
    }
    JettySolrRunner solr = new JettySolrRunner(home.toString(), config);
    solr.start();
    System.out.println("solr ready at " + solr.getBaseUrl());
    Thread.currentThread().join();
  }
}
