package catalogfs;

import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.thrift.server.TServer;
import org.apache.thrift.transport.TSaslServerTransport;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.TTransportException;
import org.apache.thrift.transport.TTransportFactory;

/**
 * HiveServer2's SASL transport factory without libthrift 0.16's garbage-collection race.
 *
 * <p>{@code TSaslServerTransport.Factory.getTransport} keeps the transport it creates only in a
 * {@code WeakReference} ({@code ret = new WeakReference<>(new TSaslServerTransport(…)); ret.get().open();
 * …; return ret.get();}). A garbage collection between those statements (the driver of {@code catalogfs
 * serve} also runs the jobs, so collections are frequent) clears the reference: {@code open()} fails
 * with a NullPointerException before the handshake, or {@code null} is returned after it, and the
 * worker closes the socket without a reply. The client sees "Could not open client transport …
 * Socket is closed by peer (08S01)" — a JDBC login refused for no reason, once in many under load.
 *
 * <p>This factory makes the same transport (same SASL server definitions, taken from the factory it
 * replaces) and holds it strongly from creation until the worker has asked for both of its ends:
 * {@code TThreadPoolServer} asks the factory twice per connection (input, then output), on the same
 * thread, so the second call takes the transport out of {@link #pending} and nothing is kept after
 * that.
 */
public final class HeldSaslTransportFactory extends TTransportFactory {
    private final Constructor<TSaslServerTransport> make;
    private final Map<?, ?> definitions;
    private final Map<TTransport, TSaslServerTransport> pending = new ConcurrentHashMap<>();

    private HeldSaslTransportFactory(TSaslServerTransport.Factory replaced) throws ReflectiveOperationException {
        Field defs = TSaslServerTransport.Factory.class.getDeclaredField("serverDefinitionMap");
        defs.setAccessible(true);
        definitions = (Map<?, ?>) defs.get(replaced);
        make = TSaslServerTransport.class.getDeclaredConstructor(Map.class, TTransport.class);
        make.setAccessible(true);
    }

    /**
     * Put this factory in place of {@code server}'s SASL transport factories (input and output).
     * A server whose factories are not libthrift's SASL factory (TLS-only, another Thrift) is left
     * as it is; returns whether it was replaced.
     */
    public static boolean install(TServer server) {
        try {
            Field input = TServer.class.getDeclaredField("inputTransportFactory_");
            Field output = TServer.class.getDeclaredField("outputTransportFactory_");
            input.setAccessible(true);
            output.setAccessible(true);
            if (!(input.get(server) instanceof TSaslServerTransport.Factory sasl) || output.get(server) != sasl) {
                return false;
            }
            HeldSaslTransportFactory held = new HeldSaslTransportFactory(sasl);
            input.set(server, held);
            output.set(server, held);
            return true;
        } catch (ReflectiveOperationException exc) {
            throw new IllegalStateException("libthrift's TServer or SASL factory changed (a new Spark?)", exc);
        }
    }

    @Override
    public TTransport getTransport(TTransport base) throws TTransportException {
        TSaslServerTransport opened = pending.remove(base);  // the second end of a connection opened below
        if (opened != null) {
            return opened;
        }
        TSaslServerTransport transport;
        try {
            transport = make.newInstance(definitions, base);
        } catch (ReflectiveOperationException exc) {
            throw new TTransportException(exc);
        }
        transport.open();  // the SASL handshake (a failed login: TTransportException, as before)
        pending.put(base, transport);
        return transport;
    }
}
