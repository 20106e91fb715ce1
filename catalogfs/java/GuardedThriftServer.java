package catalogfs;

import java.lang.reflect.Field;
import java.lang.reflect.Method;

import org.apache.hadoop.hive.common.ServerUtils;
import org.apache.hadoop.hive.conf.HiveConf;
import org.apache.hive.service.AbstractService;
import org.apache.hive.service.CompositeService;
import org.apache.hive.service.Service.STATE;
import org.apache.hive.service.cli.CLIService;
import org.apache.hive.service.cli.HiveSQLException;
import org.apache.hive.service.cli.SessionHandle;
import org.apache.hive.service.cli.session.SessionManager;
import org.apache.hive.service.cli.thrift.ThriftBinaryCLIService;
import org.apache.hive.service.rpc.thrift.TOpenSessionReq;
import org.apache.hive.service.rpc.thrift.TOpenSessionResp;
import org.apache.hive.service.rpc.thrift.TStatusCode;
import org.apache.hive.service.server.HiveServer2;
import org.apache.spark.SparkContext;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.hive.HiveUtils$;
import org.apache.spark.sql.hive.client.HiveClientImpl;
import org.apache.spark.sql.hive.thriftserver.HiveThriftServer2;
import org.apache.spark.sql.hive.thriftserver.HiveThriftServer2$;
import org.apache.spark.sql.hive.thriftserver.SparkSQLCLIService;
import org.apache.spark.sql.hive.thriftserver.server.SparkSQLOperationManager;
import org.apache.thrift.TException;

/**
 * Spark's HiveServer2 (binary transport) with a guarded OpenSession: the settings a client sends
 * when its session opens (the JDBC URL's {@code ?key=value}, {@code #var=value}, a raw client's
 * {@code set:system:…}) are checked against {@link ConsumerRules#openSessionRefusal} before Hive
 * applies any of them, and the session is refused as a whole otherwise. An opened session's Spark
 * session gets the role of the authenticated user ({@link SessionRoles}).
 *
 * <p>Its Thrift server keeps each login's SASL transport strongly referenced
 * ({@link HeldSaslTransportFactory}): libthrift's own factory can lose it to a garbage collection.
 *
 * <p>{@link #start} does what {@code HiveThriftServer2.startWithContext} does (Spark 4.2), with this
 * service in place of {@code ThriftBinaryCLIService}.
 */
public final class GuardedThriftServer extends HiveThriftServer2 {
    private final SparkSession session;
    private final boolean authenticated;

    GuardedThriftServer(SparkSession session, boolean authenticated) {
        super(session);
        this.session = session;
        this.authenticated = authenticated;
    }

    /** Start the server over {@code session}'s catalogue; {@code authenticated}: users log in. */
    public static HiveThriftServer2 start(SparkSession session, boolean authenticated) throws Exception {
        HiveThriftServer2$.MODULE$.systemExitOnError().set(false);
        if (authenticated) {  // Hive's password check reads its class from a new HiveConf: a system property
            System.setProperty("hive.server2.custom.authentication.class", PasswordFileAuthenticator.class.getName());
        }
        HiveClientImpl executionHive = HiveUtils$.MODULE$.newClientForExecution(
            session.sparkContext().conf(), session.sessionState().newHadoopConf());
        ServerUtils.cleanUpScratchDir(executionHive.conf());
        GuardedThriftServer server = new GuardedThriftServer(session, authenticated);
        server.init(executionHive.conf());
        server.start();
        Method listener = HiveThriftServer2$.class.getDeclaredMethod(
            "createListenerAndUI", HiveThriftServer2.class, SparkContext.class);
        listener.setAccessible(true);
        listener.invoke(HiveThriftServer2$.MODULE$, server, session.sparkContext());
        return server;
    }

    @Override
    public void init(HiveConf hiveConf) {
        SparkSQLCLIService cli = new SparkSQLCLIService(this, session);
        setField(HiveServer2.class, "cliService", cli);
        addService(cli);
        Service thrift = new Service(cli, authenticated);
        setField(HiveServer2.class, "thriftCLIService", thrift);
        addService(thrift);
        initServices(hiveConf);
    }

    /**
     * What {@code CompositeService.init} does, without {@code HiveServer2.init} (which would make its
     * own CLI service): init each added service, then this one's state and conf (Spark's
     * {@code ReflectedCompositeService.initCompositeService}, which counts ancestor classes from
     * {@code HiveThriftServer2} and so cannot be used from a subclass).
     */
    @SuppressWarnings("unchecked")
    private void initServices(HiveConf hiveConf) {
        try {
            Field list = CompositeService.class.getDeclaredField("serviceList");
            list.setAccessible(true);
            for (org.apache.hive.service.Service service : (java.util.List<org.apache.hive.service.Service>) list.get(this)) {
                service.init(hiveConf);
            }
            Method ensure = AbstractService.class.getDeclaredMethod("ensureCurrentState", STATE.class);
            ensure.setAccessible(true);
            ensure.invoke(this, STATE.NOTINITED);
            setField(AbstractService.class, "hiveConf", hiveConf);
            Method change = AbstractService.class.getDeclaredMethod("changeState", STATE.class);
            change.setAccessible(true);
            change.invoke(this, STATE.INITED);
        } catch (ReflectiveOperationException exc) {
            throw new IllegalStateException("HiveServer2's services changed (a new Spark?)", exc);
        }
    }

    private void setField(Class<?> owner, String name, Object value) {
        try {
            Field field = owner.getDeclaredField(name);
            field.setAccessible(true);
            field.set(this, value);
        } catch (ReflectiveOperationException exc) {
            throw new IllegalStateException(owner.getSimpleName() + " has no field " + name + " (a new Spark?)", exc);
        }
    }

    static final class Service extends ThriftBinaryCLIService {
        private final boolean authenticated;

        Service(CLIService cli, boolean authenticated) {
            super(cli);
            this.authenticated = authenticated;
        }

        /** Hive's server, with SASL transports that a garbage collection cannot lose mid-login
         * ({@link HeldSaslTransportFactory}). */
        @Override
        protected void initializeServer() {
            super.initializeServer();
            if (server != null) {
                HeldSaslTransportFactory.install(server);
            }
        }

        @Override
        public TOpenSessionResp OpenSession(TOpenSessionReq request) throws TException {
            String refusal = ConsumerRules.openSessionRefusal(request.getConfiguration());
            if (refusal != null) {
                TOpenSessionResp refused = new TOpenSessionResp();
                refused.setStatus(HiveSQLException.toTStatus(new HiveSQLException(refusal)));
                return refused;
            }
            String user = SessionManager.getUserName();  // who logged in (SASL), on this thread
            TOpenSessionResp response = super.OpenSession(request);
            if (response.getStatus().getStatusCode() == TStatusCode.SUCCESS_STATUS && response.isSetSessionHandle()) {
                SessionHandle handle = new SessionHandle(response.getSessionHandle());
                SparkSQLOperationManager operations =
                    (SparkSQLOperationManager) cliService.getSessionManager().getOperationManager();
                SparkSession opened = operations.sessionToContexts().get(handle);
                if (opened != null) {
                    SessionRoles.record(opened, roleOf(user));
                }
            }
            return response;
        }

        private String roleOf(String user) {
            if (!authenticated || user == null) {
                return SessionRoles.READER;
            }
            try {
                String role = UsersFile.roleOfUser(user);
                return role == null ? SessionRoles.READER : role;
            } catch (java.io.IOException exc) {
                return SessionRoles.READER;
            }
        }
    }
}
