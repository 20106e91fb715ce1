import java.net.InetAddress;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.hive.service.auth.PlainSaslHelper;
import org.apache.thrift.TProcessor;
import org.apache.thrift.server.TServer;
import org.apache.thrift.server.TThreadPoolServer;
import org.apache.thrift.transport.TServerSocket;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;

/**
 * Logins through HiveServer2's SASL PLAIN transport on a real TThreadPoolServer while two threads
 * allocate without pause (frequent collections), as in a `catalogfs serve` driver that runs jobs.
 * Usage: SaslLogins LOGINS original|held. Prints one line: "logins N, handshakes failed F, reached R",
 * where R counts connections whose worker got one SASL transport for both of its ends.
 */
public final class SaslLogins {
    static volatile Object sink;

    public static void main(String[] args) throws Exception {
        int logins = Integer.parseInt(args[0]);
        AtomicInteger reached = new AtomicInteger();
        TProcessor processor = (in, out) -> {
            if (in.getTransport() != null && in.getTransport() == out.getTransport()) {
                reached.incrementAndGet();
            }
            throw new org.apache.thrift.transport.TTransportException(
                org.apache.thrift.transport.TTransportException.END_OF_FILE, "done");  // ends this worker quietly
        };
        TServerSocket socket = new TServerSocket(new java.net.InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
        TServer server = new TThreadPoolServer(new TThreadPoolServer.Args(socket)
            .transportFactory(PlainSaslHelper.getPlainTransportFactory("NONE")).processor(processor));
        if (args[1].equals("held") && !catalogfs.HeldSaslTransportFactory.install(server)) {
            throw new IllegalStateException("not installed");
        }
        Thread serving = new Thread(server::serve);
        serving.setDaemon(true);
        serving.start();
        for (int i = 0; i < 2; i++) {
            Thread garbage = new Thread(() -> {
                while (true) {
                    sink = new byte[4096];
                }
            });
            garbage.setDaemon(true);
            garbage.start();
        }
        int port = socket.getServerSocket().getLocalPort();
        int failed = 0;
        for (int i = 0; i < logins; i++) {
            TTransport client = PlainSaslHelper.getPlainTransport("reader", "secret", new TSocket("127.0.0.1", port));
            try {
                client.open();
            } catch (Exception exc) {
                failed++;
            } finally {
                client.close();
            }
        }
        Thread.sleep(500);  // the last workers
        System.out.println("logins " + logins + ", handshakes failed " + failed + ", reached " + reached.get());
        System.exit(0);
    }
}
